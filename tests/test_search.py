"""Stage 3: search strategies on synthetic scores, the loss evaluator, PEFT-loadable extraction, the CLI."""

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from report_shapes import assert_report_shape
from transformers import AutoModelForCausalLM

from shears_nncf import elastic
from shears_nncf.cli import main
from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig, SearchConfig
from shears_nncf.datasets import tokenize_record
from shears_nncf.elastic import ElasticGroup, SearchSpace
from shears_nncf.errors import ShearsError
from shears_nncf.models import load_tokenizer
from shears_nncf.reports import SearchReport
from shears_nncf.selection import LossEvaluator, extract_subadapter, search
from shears_nncf.strategies import Scorer, hill_climb, neighbours, nsga2, pareto_front

WIDTHS = [8, 6, 4]
ALPHA = 16.0

VALIDATION = [
    {"instruction": "What is 12 plus 30?", "input": "", "output": "The answer is 42."},
    {"instruction": "Solve the problem.", "input": "3 + 4", "output": "The answer is 7."},
    {
        "instruction": "Please choose the correct answer: option1 or option2.",
        "input": "",
        "output": "the correct answer is option2",
    },
    {"instruction": "Sparse language models keep half of their weights at zero?", "input": "", "output": "true"},
    {"instruction": "The quick brown fox jumps over the lazy dog. Question: what is 1?", "input": "", "output": "1"},
]


# ------------------------------------------------------------------------------------------- fixtures


def _base(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def super_adapter(tiny_llama, tmp_path_factory) -> Path:
    """A rank-8 elastic super-adapter on the tiny Llama, non-zero B, with a validation split."""
    out = tmp_path_factory.mktemp("super") / "adapter"
    nls = NLSConfig(
        elasticity=ElasticityConfig(
            groups=[["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]], ranks=[WIDTHS] * 3
        ),
        lora=LoraSettings(lora_alpha=ALPHA, lora_dropout=0.0),
    )
    peft_model, ctl = elastic.add_elastic_lora(_base(tiny_llama), nls)
    gen = torch.Generator().manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.2
    elastic.save_super_adapter(peft_model, ctl.space, out)
    (out / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in VALIDATION))
    return out


@pytest.fixture(scope="module")
def space(super_adapter) -> SearchSpace:
    return SearchSpace.load(super_adapter)


def _mixed(space: SearchSpace) -> dict:
    return {g.name: g.ranks[i % len(g.ranks)] for i, g in enumerate(space.groups)}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("which", ["maximal", "minimal", "heuristic", "mixed"])
def test_stock_peft_loads_the_extracted_sub_adapter_and_matches_the_super_adapter(
    which, tiny_llama, super_adapter, space, tmp_path
):
    config = _mixed(space) if which == "mixed" else getattr(space, which)()
    extract_subadapter(super_adapter, config, tmp_path / "sub")
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(1))

    sup, ctl = elastic.load_elastic_lora(_base(tiny_llama), super_adapter)
    ctl.activate(config)
    expected = _logits(sup.eval(), ids)
    ctl.activate(space.maximal())
    maximal = _logits(sup, ids)

    sub = PeftModel.from_pretrained(_base(tiny_llama), str(tmp_path / "sub")).eval()
    got = _logits(sub, ids)
    assert (got - expected).abs().max().item() < 1e-5
    if config != space.maximal():  # the sub-adapter really is smaller, so the comparison can fail
        assert (got - maximal).abs().max().item() > 1e-3

    ranks = space.module_ranks(config)
    for name, module in sub.base_model.model.named_modules():
        if name in ranks:
            assert module.lora_A["default"].weight.shape[0] == ranks[name]
            assert module.lora_B["default"].weight.shape[1] == ranks[name]
            assert module.scaling["default"] == pytest.approx(ALPHA / max(WIDTHS))
    assert json.loads((tmp_path / "sub" / "subnet_config.json").read_text()) == config
    cfg = json.loads((tmp_path / "sub" / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {m: r for m, r in ranks.items()}
    assert cfg["alpha_pattern"] == {m: ALPHA * r / max(WIDTHS) for m, r in ranks.items()}


def test_extraction_rejects_widths_outside_the_space(super_adapter, space, tmp_path):
    bad = {**space.maximal(), space.groups[0].name: 5}
    with pytest.raises(ShearsError, match="not in its list"):
        extract_subadapter(super_adapter, bad, tmp_path / "sub")
    assert not (tmp_path / "sub").exists()


# --------------------------------------------------------------------------------- synthetic strategies


def _synthetic_space(n_groups=5, widths=(32, 24, 16, 8)) -> SearchSpace:
    groups = [ElasticGroup(f"g{i}", [f"m{i}"], list(widths)) for i in range(n_groups)]
    return SearchSpace(
        groups=groups,
        max_rank=max(widths),
        lora_alpha=64.0,
        module_shapes={f"m{i}": [100 + 10 * i, 100] for i in range(n_groups)},
    )


class Counting:
    """A score function that records how often each configuration was scored."""

    def __init__(self, fn):
        self.fn, self.calls = fn, Counter()

    def __call__(self, config):
        self.calls[tuple(sorted(config.items()))] += 1
        return self.fn(config)


def _index_score(space, target):
    """A separable bowl with its minimum at the given width indices."""

    def score(config):
        return float(sum((g.ranks.index(config[g.name]) - t) ** 2 for g, t in zip(space.groups, target)))

    return score


def test_neighbours_move_one_group_one_step():
    space = _synthetic_space(3)
    config = {"g0": 32, "g1": 16, "g2": 8}
    got = neighbours(space, config)
    assert sorted(map(lambda c: tuple(c.values()), got)) == sorted([(24, 16, 8), (32, 24, 8), (32, 8, 8), (32, 16, 16)])


def test_hill_climbing_finds_the_known_optimum_and_never_rescores():
    space = _synthetic_space()
    target = [3, 0, 2, 3, 0]  # heuristic is index 1 everywhere
    fn = Counting(_index_score(space, target))
    result = hill_climb(
        space, fn, SearchConfig(strategy="hill-climbing", budget=200, patience=3, neighbours=10, seed=0)
    )
    assert result.best.config == {g.name: g.ranks[t] for g, t in zip(space.groups, target)}
    assert result.best.score == 0.0
    assert max(fn.calls.values()) == 1
    assert len(fn.calls) == len(result.evaluations) <= 200
    assert result.evaluations[0].config == space.heuristic()


def test_hill_climbing_keeps_the_best_seen_when_neighbours_are_worse():
    """The optimum is the start: a climber that always moves to its best neighbour would walk away from it."""
    space = _synthetic_space()
    fn = Counting(_index_score(space, [1] * 5))
    result = hill_climb(space, fn, SearchConfig(strategy="hill-climbing", budget=50, patience=3, neighbours=2, seed=3))
    assert result.best.config == space.heuristic()
    assert len(result.evaluations) == 1 + 3 * 2  # three turns of two worse neighbours, then patience runs out
    assert all(ev.score > result.best.score for ev in result.evaluations[1:])
    assert max(fn.calls.values()) == 1


def test_hill_climbing_returns_the_best_seen_not_the_last_turn():
    """With a noisy landscape the best configuration seen is returned, whatever the final turn scored."""
    space = _synthetic_space(6)
    rng = random.Random(0)
    table = {}

    def noisy(config):
        key = tuple(config.values())
        return table.setdefault(key, rng.random())

    result = hill_climb(
        space, Counting(noisy), SearchConfig(strategy="hill-climbing", budget=40, patience=4, neighbours=3, seed=1)
    )
    assert result.best.preference == min(ev.preference for ev in result.evaluations)
    assert len(result.evaluations) <= 40
    assert len({tuple(ev.config.values()) for ev in result.evaluations}) == len(result.evaluations)


def test_hill_climbing_stops_at_the_budget_and_at_a_local_optimum():
    space = _synthetic_space()
    fn = Counting(_index_score(space, [3, 0, 2, 3, 0]))
    assert (
        len(
            hill_climb(
                space, fn, SearchConfig(strategy="hill-climbing", budget=5, patience=10, neighbours=4)
            ).evaluations
        )
        == 5
    )
    small = _synthetic_space(2, widths=(8, 4))  # 4 configurations in all
    fn = Counting(lambda c: float(c["g0"] + c["g1"]))
    res = hill_climb(small, fn, SearchConfig(strategy="hill-climbing", budget=100, patience=100, neighbours=1))
    assert res.best.config == small.minimal() and len(fn.calls) <= small.size()


def _dominates(a, b):
    return (
        a.score <= b.score
        and a.adapter_params <= b.adapter_params
        and (a.score < b.score or a.adapter_params < b.adapter_params)
    )


def test_nsga2_returns_a_non_dominated_front_within_budget():
    space = _synthetic_space(6)
    # larger ranks score better (a typical accuracy/size trade-off), with group-specific weights
    weights = [0.5, 2.0, 1.0, 0.2, 1.5, 0.8]
    fn = Counting(lambda c: sum(w / c[g.name] for w, g in zip(weights, space.groups)))
    result = nsga2(space, fn, SearchConfig(strategy="nsga2", budget=60, population=10, seed=0))
    assert max(fn.calls.values()) == 1 and len(fn.calls) <= 60
    front = result.front
    assert len(front) >= 3
    for a in front:
        assert not any(_dominates(b, a) for b in front)
    for ev in result.evaluations:  # everything off the front is dominated by a front member
        if ev not in front:
            assert any(_dominates(f, ev) for f in front)
    assert result.best.preference == min(ev.preference for ev in result.evaluations)
    seen = {tuple(ev.config.values()) for ev in result.evaluations}
    for ref in (space.heuristic(), space.maximal(), space.minimal()):
        assert tuple(ref.values()) in seen


def test_pareto_front_by_hand():
    space = _synthetic_space(1)
    scorer = Scorer(space, lambda c: {32: 1.0, 24: 1.0, 16: 2.0, 8: 1.5}[c["g0"]], progress=False)
    for w in (32, 24, 16, 8):
        scorer({"g0": w})
    front = pareto_front(scorer.history)
    assert [ev.config["g0"] for ev in front] == [8, 24]  # 32 is dominated by 24 (same score, larger), 16 by 8


def test_scorer_memoizes_and_enforces_the_budget():
    space = _synthetic_space(2)
    fn = Counting(lambda c: 1.0)
    scorer = Scorer(space, fn, budget=2, progress=False)
    a, b, c = space.maximal(), space.minimal(), space.heuristic()
    assert scorer(a) is scorer(a)
    assert scorer(b) is not None and scorer.exhausted
    assert scorer(c) is None
    assert scorer(c, source="reference") is not None  # references are scored outside the budget
    assert sum(fn.calls.values()) == 3
    with pytest.raises(ShearsError, match="unknown group"):
        scorer({**a, "nope": 8})


# -------------------------------------------------------------------------------------------- evaluator


def test_loss_evaluator_matches_per_record_losses(tiny_llama, super_adapter, space):
    tok = load_tokenizer(str(tiny_llama))
    model, ctl = elastic.load_elastic_lora(_base(tiny_llama), super_adapter)
    model.eval()
    evaluator = LossEvaluator(model, ctl, tok, VALIDATION, batch_size=3, cutoff_len=256)
    for config in (space.maximal(), space.minimal()):
        loss, metrics = evaluator(config)
        assert math.isfinite(loss) and loss > 0 and metrics["perplexity"] == pytest.approx(math.exp(loss))
        # independent: HF's own mean loss per record (unpadded), weighted by its number of target tokens
        ctl.activate(config)
        total = count = 0
        for r in VALIDATION:
            enc = tokenize_record(r, tok, 256)
            ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
            n = int((labels[:, 1:] != -100).sum())
            with torch.no_grad():
                total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
        assert loss == pytest.approx(total / count, rel=1e-5)
        assert metrics["tokens"] == count
    assert evaluator(space.maximal())[0] != evaluator(space.minimal())[0]


# ------------------------------------------------------------------------------------------ end to end


def test_search_cli_hill_climbing_writes_a_loadable_adapter_and_report(tiny_llama, super_adapter, tmp_path, capsys):
    out = tmp_path / "sub"
    rc = main(
        [
            "search",
            "--model",
            str(tiny_llama),
            "--adapter",
            str(super_adapter),
            "--output",
            str(out),
            "--strategy",
            "hill-climbing",
            "--budget",
            "6",
            "--neighbours",
            "3",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    assert "hill-climbing" in capsys.readouterr().out
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "subnet_config.json",
        "search_report.json",
        "search.png",
    ):
        assert (out / name).is_file(), name
    report = json.loads((out / "search_report.json").read_text())
    strategy = [e for e in report["evaluations"] if e["source"] == "strategy"]
    assert 1 <= len(strategy) <= 6
    keys = [tuple(sorted(e["config"].items())) for e in report["evaluations"]]
    assert len(keys) == len(set(keys))
    assert report["chosen"]["score"] == min(e["score"] for e in strategy)
    assert report["used_test_set"] is False and report["evaluator"]["kind"] == "loss"
    assert all(report["references"][k] is not None for k in ("maximal", "heuristic", "minimal"))
    assert all(e["seconds"] >= 0 and e["adapter_params"] > 0 for e in report["evaluations"])
    front = report["pareto_front"]
    for a in front:
        assert not any(
            b["score"] <= a["score"]
            and b["adapter_params"] <= a["adapter_params"]
            and (b["score"], b["adapter_params"]) != (a["score"], a["adapter_params"])
            for b in front
        )
    PeftModel.from_pretrained(_base(tiny_llama), str(out))  # stock PEFT loads it


def test_search_with_a_config_file_and_a_task_on_a_test_set(
    tiny_llama, super_adapter, space, tmp_path, caplog, shared_dir
):
    cfg_file = tmp_path / "subnet.json"
    cfg_file.write_text(json.dumps(_mixed(space)))
    report = search(
        str(tiny_llama),
        super_adapter,
        tmp_path / "out",
        SearchConfig(strategy=str(cfg_file), eval="boolq", limit=2, batch_size=2),
    )
    assert report["used_test_set"] is True
    assert "SELECTION USES A TEST SET" in caplog.text
    assert json.loads((tmp_path / "out" / "subnet_config.json").read_text()) == _mixed(space)
    (ev,) = report["evaluations"]
    assert ev["score"] == pytest.approx(1 - ev["metrics"]["accuracy"])
    assert report["evaluator"]["tasks"][0]["test_set"] is True
    assert_report_shape(report, SearchReport)
    assert json.loads((tmp_path / "out" / "search_report.json").read_text()) == json.loads(json.dumps(report))


# ------------------------------------------------------------------------------------------ bad input


def _run_bad(args, capsys, tmp_path):
    out = tmp_path / "never"
    rc = main(["search", *args, "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]
    return err


def test_cli_rejects_a_folder_without_elastic_config(tiny_llama, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    err = _run_bad(["--model", str(tiny_llama), "--adapter", str(plain)], capsys, tmp_path)
    assert "elastic_config.json" in err


@pytest.mark.parametrize("bad", ["unknown_group", "width"])
def test_cli_rejects_a_config_outside_the_space(bad, tiny_llama, super_adapter, space, tmp_path, capsys):
    config = space.maximal()
    if bad == "unknown_group":
        config["model.layers.7.q_proj"] = 8
    else:
        config[space.groups[1].name] = 5
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    err = _run_bad(
        ["--model", str(tiny_llama), "--adapter", str(super_adapter), "--strategy", str(path)], capsys, tmp_path
    )
    assert (
        ("unknown group 'model.layers.7.q_proj'" in err)
        if bad == "unknown_group"
        else ("rank 5" in err and "[8, 6, 4]" in err)
    )


def test_cli_rejects_a_device_this_machine_lacks(tiny_llama, super_adapter, tmp_path, capsys):
    err = _run_bad(
        ["--model", str(tiny_llama), "--adapter", str(super_adapter), "--device", "cuda:99"], capsys, tmp_path
    )
    assert "device 'cuda:99' is not available" in err


def test_cli_rejects_a_zero_budget(tiny_llama, super_adapter, tmp_path, capsys):
    err = _run_bad(["--model", str(tiny_llama), "--adapter", str(super_adapter), "--budget", "0"], capsys, tmp_path)
    assert "--budget must be a positive integer, got 0" in err


def test_cli_rejects_loss_without_a_validation_split(tiny_llama, super_adapter, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in super_adapter.iterdir():
        if f.name != "validation.jsonl":
            (bare / f.name).write_bytes(f.read_bytes())
    err = _run_bad(["--model", str(tiny_llama), "--adapter", str(bare)], capsys, tmp_path)
    assert "validation.jsonl" in err


def test_rank_pattern_keys_do_not_leak_between_layers_1_and_11(tmp_path):
    """PEFT matches pattern keys as regexes on name suffixes: layer 1's key must not claim layer 11's modules."""
    from tiny_models import make_model

    model, _ = make_model("llama", num_hidden_layers=12)
    nls = NLSConfig(
        elasticity=ElasticityConfig(groups=[["q_proj", "v_proj"], ["down_proj"]], ranks=[WIDTHS] * 2),
        lora=LoraSettings(lora_alpha=ALPHA, lora_dropout=0.0),
    )
    peft_model, ctl = elastic.add_elastic_lora(model, nls)
    elastic.save_super_adapter(peft_model, ctl.space, tmp_path / "super")
    space = ctl.space
    config = {g.name: g.ranks[int(g.name.split(".")[2]) % 3] for g in space.groups}  # layer 1: 6, layer 11: 4
    extract_subadapter(tmp_path / "super", config, tmp_path / "sub")
    fresh, _ = make_model("llama", num_hidden_layers=12)
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "sub"))
    ranks = space.module_ranks(config)
    got = {
        n: m.lora_A["default"].weight.shape[0]
        for n, m in loaded.base_model.model.named_modules()
        if hasattr(m, "lora_A")
    }
    assert got == ranks
    assert got["model.layers.1.self_attn.q_proj"] == 6 and got["model.layers.11.self_attn.q_proj"] == 4
