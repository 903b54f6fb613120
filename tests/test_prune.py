"""Stage 1: Wanda / magnitude pruning checked against independent computations of the criterion."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from report_shapes import assert_report_shape
from tiny_models import CORPUS, make_model
from torch import nn

from shears_nncf import cli
from shears_nncf.calibration import calibration_windows
from shears_nncf.config import PruningConfig
from shears_nncf.errors import ShearsError
from shears_nncf.masks import pruning_mask
from shears_nncf.models import decoder_blocks
from shears_nncf.pruning import sparsify
from shears_nncf.reports import SparsityReport

ARCHS = ["llama", "qwen2", "mistral", "phi3", "gpt_neox", "gemma", "opt"]
TOL = 1e-5  # relative slack for float rounding between the two ways of computing the same norms


def windows_for(tok, n=6, seqlen=24, seed=0):
    return calibration_windows(tok, CORPUS * 10, n, seqlen, seed)


def block_linear_names(model, i):
    prefix, blocks = decoder_blocks(model)
    return {f"{prefix}.{i}.{n}": m for n, m in blocks[i].named_modules() if isinstance(m, nn.Linear)}


def input_sq_norms(model, linears, windows, batch_size):
    """Sum of x_j^2 over all tokens entering each linear, from ordinary forward passes of the whole model."""
    sums = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}

    def hook(name):
        def f(_m, inputs, _out):
            x = inputs[0].double()
            sums[name] += x.pow(2).sum(dim=tuple(range(x.dim() - 1)))

        return f

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    with torch.no_grad():
        for chunk in windows.split(batch_size):
            model(chunk)
    for h in handles:
        h.remove()
    return sums


def replay_pruned_blocks(original, pruned, upto):
    """A copy of the original model whose blocks < upto carry the pruned weights; block upto and later are dense."""
    model = copy.deepcopy(original)
    _, blocks = decoder_blocks(model)
    _, done = decoder_blocks(pruned)
    for i in range(upto):
        blocks[i].load_state_dict(done[i].state_dict())
    return model


def lowest_per_row_ok(zero, metric):
    """Per row: every pruned score is <= every kept score (up to rounding)."""
    pruned_max = metric.masked_fill(~zero, float("-inf")).amax(1)
    kept_min = metric.masked_fill(zero, float("inf")).amin(1)
    return pruned_max <= kept_min * (1 + TOL) + 1e-12


@pytest.fixture(scope="module")
def pruned_llama():
    model, tok = make_model("llama", initializer_range=0.2)
    w = windows_for(tok)
    pruned = copy.deepcopy(model)
    report = sparsify(pruned, w, PruningConfig(sparsity_level=0.5, batch_size=4))
    return model, pruned, w, report


@pytest.mark.parametrize("arch", ARCHS)
def test_wanda_matches_criterion_sequentially(arch):
    """Block i's zeros are the lowest |W|*||X|| per row, with X recorded from the model whose earlier blocks are
    pruned."""
    original, tok = make_model(arch, initializer_range=0.2)
    w = windows_for(tok)
    pruned = copy.deepcopy(original)
    report = sparsify(pruned, w, PruningConfig(sparsity_level=0.5, batch_size=4))
    _, blocks = decoder_blocks(original)
    for i in range(len(blocks)):
        reference = replay_pruned_blocks(original, pruned, upto=i)
        linears = block_linear_names(reference, i)
        sq = input_sq_norms(reference, linears, w, batch_size=4)
        got = dict(pruned.named_modules())
        for name, lin in linears.items():
            weight = got[name].weight
            zero = weight == 0
            k = int(lin.in_features * 0.5)
            assert (zero.sum(1) == k).all(), f"{name}: not exactly {k} zeros per row"
            metric = lin.weight.double().abs() * sq[name].sqrt()
            assert lowest_per_row_ok(zero, metric).all(), f"{name}: zeros are not the lowest Wanda scores"
            torch.testing.assert_close(weight[~zero], lin.weight[~zero], rtol=0, atol=0)  # kept weights unchanged
            assert report["modules"][name] == pytest.approx(k / lin.in_features)
    # embeddings, norms, lm_head and every other non-projection parameter are untouched
    pruned_names = set(report["modules"])
    after = dict(pruned.named_parameters(remove_duplicate=False))
    for name, p in original.named_parameters(remove_duplicate=False):
        if name.removesuffix(".weight") not in pruned_names:
            assert torch.equal(p, after[name]), f"{name} changed"
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_block1_statistics_come_from_the_pruned_block0(pruned_llama):
    """Statistics taken from the dense model (no sequential update) would select a different zero set."""
    original, pruned, w, _ = pruned_llama
    linears = block_linear_names(original, 1)
    dense_sq = input_sq_norms(original, linears, w, batch_size=4)
    seq_sq = input_sq_norms(replay_pruned_blocks(original, pruned, upto=1), linears, w, batch_size=4)
    got = dict(pruned.named_modules())
    violations_dense = 0
    for name, lin in linears.items():
        zero = got[name].weight == 0
        assert lowest_per_row_ok(zero, lin.weight.double().abs() * seq_sq[name].sqrt()).all()
        violations_dense += int((~lowest_per_row_ok(zero, lin.weight.double().abs() * dense_sq[name].sqrt())).sum())
    assert violations_dense > 0, "the test cannot tell sequential from dense statistics"


def test_statistics_come_from_the_dense_block(pruned_llama):
    """Within a block all projections are scored on the dense block's activations (one stats pass per block)."""
    original, pruned, w, _ = pruned_llama
    # o_proj / down_proj inputs if q/k/v and gate/up of the same block were already pruned: another zero set
    reference = replay_pruned_blocks(original, pruned, upto=0)
    _, blocks = decoder_blocks(reference)
    _, done = decoder_blocks(pruned)
    for attr in ("q_proj", "k_proj", "v_proj"):
        getattr(blocks[0].self_attn, attr).weight.data.copy_(getattr(done[0].self_attn, attr).weight)
    name = f"{decoder_blocks(original)[0]}.0.self_attn.o_proj"
    lin = dict(original.named_modules())[name]
    within_sq = input_sq_norms(reference, {name: dict(reference.named_modules())[name]}, w, 4)[name]
    dense_sq = input_sq_norms(original, {name: lin}, w, 4)[name]
    zero = dict(pruned.named_modules())[name].weight == 0
    assert lowest_per_row_ok(zero, lin.weight.double().abs() * dense_sq.sqrt()).all()
    assert not lowest_per_row_ok(zero, lin.weight.double().abs() * within_sq.sqrt()).all()


def test_sliding_window_layers_get_their_own_masks():
    """Qwen2 with a sliding-window block after a full-attention block: block 1 must see its own (sliding) mask."""
    original, tok = make_model(
        "qwen2",
        initializer_range=0.2,
        use_sliding_window=True,
        sliding_window=4,
        layer_types=["full_attention", "sliding_attention"],
        attn_implementation="eager",
    )
    w = windows_for(tok, n=4, seqlen=24)
    pruned = copy.deepcopy(original)
    sparsify(pruned, w, PruningConfig(batch_size=2))
    reference = replay_pruned_blocks(original, pruned, upto=1)
    linears = block_linear_names(reference, 1)
    name = next(n for n in linears if n.endswith("o_proj"))  # its input depends on the attention mask
    sq = input_sq_norms(reference, {name: linears[name]}, w, 2)[name]
    zero = dict(pruned.named_modules())[name].weight == 0
    assert lowest_per_row_ok(zero, linears[name].weight.double().abs() * sq.sqrt()).all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_nm_pattern(pattern, method):
    n, m = map(int, pattern.split(":"))
    original, tok = make_model("llama", initializer_range=0.2)
    w = windows_for(tok)
    pruned = copy.deepcopy(original)
    report = sparsify(pruned, w, PruningConfig(method=method, pattern=pattern, batch_size=6))
    linears = block_linear_names(original, 0)
    sq = input_sq_norms(original, linears, w, 6)
    got = dict(pruned.named_modules())
    for name, lin in linears.items():
        zero = got[name].weight == 0
        groups = zero.reshape(lin.out_features, -1, m)
        assert (groups.sum(-1) == n).all(), f"{name}: not {n} zeros in every group of {m}"
        metric = lin.weight.double().abs() * (sq[name].sqrt() if method == "wanda" else 1)
        metric = metric.reshape(lin.out_features, -1, m).flatten(0, 1)
        assert lowest_per_row_ok(groups.flatten(0, 1), metric).all(), f"{name}: not the {n} lowest of each group"
    assert report["sparsity"] == pytest.approx(n / m)


def test_magnitude_unstructured_is_layer_wise():
    original, _ = make_model("llama", initializer_range=0.2)
    pruned = copy.deepcopy(original)
    report = sparsify(pruned, None, PruningConfig(method="magnitude", sparsity_level=0.4))
    assert report["calibration"] is None
    got = dict(pruned.named_modules())
    for name in report["modules"]:
        weight = dict(original.named_modules())[name].weight.abs()
        zero = got[name].weight == 0
        assert int(zero.sum()) == int(weight.numel() * 0.4)
        assert weight[zero].max() <= weight[~zero].min()


def test_wanda_variant_follows_one_alpha():
    """Every row prunes the prefix of its sorted scores whose sum stays below one common alpha x row total."""
    original, tok = make_model("llama", initializer_range=0.2)
    w = windows_for(tok)
    pruned = copy.deepcopy(original)
    report = sparsify(pruned, w, PruningConfig(use_variant=True, batch_size=6))
    linears = block_linear_names(original, 0)
    sq = input_sq_norms(original, linears, w, 6)
    got = dict(pruned.named_modules())
    counts_vary = False
    for name, lin in linears.items():
        zero = got[name].weight == 0
        metric = lin.weight.double().abs() * sq[name].sqrt()
        assert lowest_per_row_ok(zero, metric).all()
        count = zero.sum(1)
        counts_vary |= bool((count != count[0]).any())
        cum = metric.sort(1).values.cumsum(1) / metric.sum(1, keepdim=True)
        lo = (
            cum.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1).where(count > 0, torch.zeros(()).double()).max()
        )
        hi = cum.gather(1, count.clamp(max=lin.in_features - 1)[:, None]).squeeze(1).min()
        assert lo <= hi * (1 + TOL), f"{name}: no single alpha explains the per-row counts"
        assert zero.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert counts_vary, "the variant should give rows different numbers of zeros"
    assert report["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_target_modules_and_ignored_scopes():
    model, tok = make_model("llama")
    w = windows_for(tok, n=2)
    before = copy.deepcopy(model)
    cfg = PruningConfig(
        target_modules=["q_proj", "down_proj"], ignored_scopes=[r"model\.layers\.1\.mlp\..*"], batch_size=2
    )
    report = sparsify(model, w, cfg)
    assert sorted(report["modules"]) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    b = dict(before.named_parameters())
    for name, p in model.named_parameters():
        changed = not torch.equal(p, b[name])
        assert changed == (name.removesuffix(".weight") in report["modules"]), name


def test_nncf_dataset_and_iterables_give_the_same_masks():
    from shears_nncf.calibration import as_nncf_dataset

    original, tok = make_model("llama", initializer_range=0.2)
    texts = CORPUS * 10
    results = []
    for calib in (
        calibration_windows(tok, texts, 4, 24, 0),
        as_nncf_dataset(tok, texts, 4, 24, 0, batch_size=2),
        [{"input_ids": x} for x in calibration_windows(tok, texts, 4, 24, 0).split(2)],
    ):
        model = copy.deepcopy(original)
        sparsify(model, calib, PruningConfig(batch_size=2))
        results.append({n: p == 0 for n, p in model.named_parameters()})
    for other in results[1:]:
        assert all(torch.equal(results[0][n], other[n]) for n in results[0])


def test_pruning_mask_unit():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 8.0, 7.0, 5.0, 6.0]])
    assert pruning_mask(score, 0.5).tolist() == [[True, True, True, True, False, False, False, False]]
    assert pruning_mask(score, 0.5, nm=(2, 4)).tolist() == [[False, True, False, True, False, False, True, True]]
    assert not pruning_mask(score, 0.1).any()  # int(8 * 0.1) = 0


def test_sparsify_errors():
    model, tok = make_model("llama")
    with pytest.raises(ShearsError, match="calibration"):
        sparsify(model, None, PruningConfig())
    with pytest.raises(ShearsError, match="'nope' matches no Linear"):
        sparsify(model, None, PruningConfig(method="magnitude", target_modules=["nope"]))
    with pytest.raises(ShearsError, match="leave no projection"):
        sparsify(model, None, PruningConfig(method="magnitude", target_modules=["q_proj"], ignored_scopes=["q_proj"]))
    with pytest.raises(ShearsError, match="not available"):
        sparsify(model, windows_for(tok, n=2), PruningConfig(device="cuda:99"))
    with pytest.raises(ShearsError, match="use_variant"):
        PruningConfig(use_variant=True, pattern="2:4")
    with pytest.raises(ShearsError, match="2:4"):
        PruningConfig(pattern="2:4", sparsity_level=0.7)
    odd, _ = make_model("llama", intermediate_size=90)
    with pytest.raises(ShearsError, match="multiple of 4"):
        sparsify(odd, None, PruningConfig(method="magnitude", pattern="2:4"))


# ------------------------------------------------------------------------------------------- files and CLI


def test_prune_cli_round_trip(tiny_llama, calib_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "sparse"
    rc = cli.main(
        [
            "-q",
            "prune",
            "--model",
            str(tiny_llama),
            "--output",
            str(out),
            "--calibration",
            str(calib_file),
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["method"] == "wanda" and report["pattern"] == "unstructured"
    assert report["calibration"] == {"source": str(calib_file), "nsamples": 4, "seqlen": 32, "seed": 3}
    assert report["seconds"] > 0
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama)
    params = dict(reloaded.named_parameters())
    zeros = 0
    for name, frac in report["modules"].items():
        weight = params[f"{name}.weight"]
        assert (weight == 0).float().mean().item() == pytest.approx(frac)
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all()
        zeros += int((weight == 0).sum())
    assert zeros == report["zeros"] and report["sparsity"] == pytest.approx(0.5)
    for name, p in original.named_parameters():
        if name.removesuffix(".weight") not in report["modules"]:
            assert torch.equal(p, params[name]), name
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok("The quick brown fox")["input_ids"]) == "The quick brown fox"


def test_prune_function_magnitude(tiny_llama, tmp_path):
    from shears_nncf.pruning import prune

    report = prune(tiny_llama, tmp_path / "m", PruningConfig(method="magnitude", sparsity_level=0.3))
    saved = json.loads((tmp_path / "m" / "sparsity_report.json").read_text())
    assert saved == json.loads(json.dumps(report)) and report["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert saved["model"] == str(tiny_llama)
    assert_report_shape(report, SparsityReport)


def test_prune_cli_with_config_file(tiny_llama, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"compression": {"algorithm": "magnitude", "pattern": "4:8"}}))
    out = tmp_path / "mag"
    assert cli.main(["-q", "prune", "--model", str(tiny_llama), "--output", str(out), "--config", str(cfg)]) == 0
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["method"] == "magnitude" and report["pattern"] == "4:8" and report["calibration"] is None
    assert report["sparsity"] == pytest.approx(0.5)


def _error(capsys, argv, out):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists(), "a failed prune left an output folder"
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.0"], "must be a number in [0, 1), got 1.0"),
        (["--sparsity", "-0.1"], "must be a number in [0, 1), got -0.1"),
        (["--pattern", "3:4"], "--pattern must be one of"),
        (["--method", "sparsegtp"], "--method must be one of"),
        (["--nsamples", "500", "--seqlen", "64"], "tokens, fewer than nsamples x seqlen"),
        (["--calibration", "missing/calib.jsonl", "--seqlen", "32"], "is not a readable file"),
        (["--seqlen", "300"], "--seqlen 300 exceeds the model's 256 positions"),
        (["--device", "cuda:99"], "not available"),
    ],
)
def test_cli_bad_input(capsys, tiny_llama, calib_file, tmp_path, extra, message):
    out = tmp_path / "out"
    argv = ["prune", "--model", str(tiny_llama), "--output", str(out), "--calibration", str(calib_file), *extra]
    assert message in _error(capsys, argv, out)


def test_cli_missing_model_and_bad_config(capsys, tmp_path, calib_file):
    out = tmp_path / "out"
    err = _error(capsys, ["prune", "--model", str(tmp_path / "nope"), "--output", str(out)], out)
    assert "does not exist" in err
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"compression": {"algorithm": "wanda", "sparsity": 0.5}}))
    err = _error(capsys, ["prune", "--model", str(tmp_path), "--output", str(out), "--config", str(cfg)], out)
    assert "unknown key 'sparsity'" in err


def test_cli_too_short_calibration_names_token_count(capsys, tiny_llama, tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "just a few words here"}) + "\n")
    out = tmp_path / "out"
    err = _error(
        capsys,
        [
            "prune",
            "--model",
            str(tiny_llama),
            "--output",
            str(out),
            "--calibration",
            str(short),
            "--nsamples",
            "2",
            "--seqlen",
            "16",
        ],
        out,
    )
    from tiny_models import make_tokenizer

    n = len(make_tokenizer()("just a few words here", add_special_tokens=False)["input_ids"])
    assert f"has {n} tokens" in err and "2 x 16 = 32" in err
