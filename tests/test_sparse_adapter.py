"""Sparsity-masked adapters (SQFT): the update (B·A) ⊙ (W != 0) trains, merges without filling a zero, exports plain."""

import json

import numpy as np
import openvino as ov
import pytest
import torch
from tiny_models import CALIBRATION, make_model

from shears_nncf.adapters import MARKER_NAME, is_masked, mask_lora, merge_masked
from shears_nncf.cli import main
from shears_nncf.config import ElasticityConfig, ExportConfig, LoraSettings, NLSConfig, TrainingConfig
from shears_nncf.elastic import add_elastic_lora, load_elastic_lora
from shears_nncf.errors import ShearsError
from shears_nncf.exporting import export
from shears_nncf.training import train

GROUPS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]
WIDTHS = [8, 6, 4]
IDS = torch.tensor([[1, 17, 42, 99, 5, 230, 64, 301, 12, 7, 88, 150]])


def pruned_llama(seed=0):
    model, tok = make_model("llama", seed=seed)
    with torch.no_grad():
        for m in model.model.layers.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.scatter_(1, m.weight.abs().argsort(dim=1)[:, : m.weight.shape[1] // 2], 0.0)
    return model, tok


def nls_config(sparse_adapter=True, widths=WIDTHS):
    return NLSConfig(
        elasticity=ElasticityConfig(groups=GROUPS, ranks=[widths] * 3),
        lora=LoraSettings(lora_alpha=16, lora_dropout=0.0),
        sparse_adapter=sparse_adapter,
    )


def randomise_lora(peft_model, seed=3):
    """LoRA B starts at zero; give both factors values so the update is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def independent_reference(peft_model, ranks: dict):
    """The base model with each adapted weight replaced by W + s·((B_r A_r) ⊙ (W != 0)), computed here from the
    raw parameters (no PEFT forward, no project code)."""
    model, _ = pruned_llama()
    for name, module in peft_model.base_model.model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        r = ranks[name]
        a = module.lora_A["default"].weight.detach()[:r].double()
        b = module.lora_B["default"].weight.detach()[:, :r].double()
        w = module.base_layer.weight.detach().double()
        alpha, r_max = 16, 8
        s = alpha / r_max  # PEFT's scaling of the super-adapter, whatever the active rank
        target = model.get_submodule(name)
        with torch.no_grad():
            target.weight.copy_((w + s * (b @ a) * (w != 0)).float())
    return model.eval()


@pytest.mark.parametrize("active, widths", [("maximal", WIDTHS), ("minimal", WIDTHS), ("maximal", [8])])
def test_masked_forward_equals_an_independent_masked_update(active, widths):
    """Elastic (a rank-4 sub-adapter is the first 4 rows of A / columns of B) and plain LoRA (one width) alike."""
    model, _ = pruned_llama()
    peft_model, controller = add_elastic_lora(model, nls_config(widths=widths))
    assert mask_lora(peft_model) == 10
    randomise_lora(peft_model)
    getattr(controller, f"activate_{active}")()
    ranks = controller.space.module_ranks(controller.active_config)
    with torch.no_grad():
        got = peft_model(input_ids=IDS).logits
        want = independent_reference(peft_model, ranks)(input_ids=IDS).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=IDS).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the update matters, so the match above includes it


def test_merge_keeps_every_zero_and_the_logits():
    model, _ = pruned_llama()
    peft_model, controller = add_elastic_lora(model, nls_config())
    mask_lora(peft_model)
    randomise_lora(peft_model)
    controller.activate_heuristic()  # merge must take the active rank, not PEFT's maximal one
    zeros_before = {
        n: int((m.weight == 0).sum()) for n, m in pruned_llama()[0].named_modules() if isinstance(m, torch.nn.Linear)
    }
    with torch.no_grad():
        unmerged = peft_model(input_ids=IDS).logits
    merged, kept = merge_masked(peft_model)
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
    assert torch.allclose(got, unmerged, atol=1e-5, rtol=1e-4)
    for name, m in merged.named_modules():
        if isinstance(m, torch.nn.Linear) and name in zeros_before:
            assert int((m.weight == 0).sum()) == zeros_before[name], name
    assert len(kept) == 10 and sum(kept.values()) == sum(v for n, v in zeros_before.items() if n in kept)


def test_merge_refuses_an_unmasked_adapter():
    model, _ = pruned_llama()
    peft_model, _ = add_elastic_lora(model, nls_config(sparse_adapter=False))
    with pytest.raises(ShearsError, match="would fill the pruned zeros"):
        merge_masked(peft_model)


# --------------------------------------------------------------------------------- through the stages


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A masked super-adapter trained 3 steps, and its heuristic sub-adapter from 'search'."""
    root = tmp_path_factory.mktemp("sqft")
    model, tok = pruned_llama()
    model.save_pretrained(root / "sparse")
    tok.save_pretrained(root / "sparse")
    records = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"The answer is {2 * i + 1}."}
        for i in range(24)
    ]
    (root / "train.json").write_text(json.dumps(records))
    training = TrainingConfig(
        data=[str(root / "train.json")],
        batch_size=4,
        max_steps=3,
        warmup_steps=1,
        save_steps=3,
        val_set_size=4,
        cutoff_len=64,
        learning_rate=1e-2,
        seed=1,
    )
    train(str(root / "sparse"), root / "super", nls_config(), training)
    assert (
        main(
            [
                "search",
                "--model",
                str(root / "sparse"),
                "--adapter",
                str(root / "super"),
                "--output",
                str(root / "sub"),
                "--strategy",
                "heuristic",
            ]
        )
        == 0
    )
    return root


def test_training_marks_and_masks_the_adapter(trained):
    assert is_masked(trained / "super") and is_masked(trained / "sub")
    base, _ = pruned_llama()
    peft_model, controller = load_elastic_lora(base, trained / "super")
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_variant") and "default" in m.lora_variant]
    assert len(layers) == 10  # the masked update is back on after loading
    controller.activate_heuristic()
    ranks = controller.space.module_ranks(controller.active_config)
    with torch.no_grad():
        got = peft_model(input_ids=IDS).logits
        want = independent_reference(peft_model, ranks)(input_ids=IDS).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_merge_cli_writes_a_plain_sparse_model(trained, capsys):
    from transformers import AutoModelForCausalLM

    out = trained / "merged"
    assert (
        main(["merge", "--model", str(trained / "sparse"), "--adapter", str(trained / "sub"), "--output", str(out)])
        == 0
    )
    merged = AutoModelForCausalLM.from_pretrained(out)  # stock transformers, no PEFT, no adapter files
    sparse = AutoModelForCausalLM.from_pretrained(trained / "sparse")
    changed = 0
    for (name, m), (_, s) in zip(merged.model.layers.named_modules(), sparse.model.layers.named_modules()):
        if isinstance(m, torch.nn.Linear):
            assert torch.equal(m.weight == 0, s.weight == 0), name  # exactly the stage-1 zeros
            changed += not torch.equal(m.weight, s.weight)
    assert changed == 10  # q, k, v, up, down of both blocks took the update
    assert not (out / "adapter_config.json").exists()
    report = json.loads((out / "merge_report.json").read_text())
    assert report["merged_layers"] == 10 and report["zeros_kept"] == sum(
        int((m.weight == 0).sum()) for n, m in sparse.named_modules() if n in report["zeros_kept_per_layer"]
    )


def test_export_merge_gives_a_plain_sparse_w8a8_ir(trained, tmp_path):
    from optimum.intel import OVModelForCausalLM

    report = export(
        trained / "sparse",
        tmp_path / "ir",
        adapter=trained / "sub",
        config=ExportConfig(quantize="w8a8", nsamples=8, seqlen=32, merge=True),
        calibration_texts=CALIBRATION,
    )
    assert report["config"]["merge"] and report["lora_matmuls"] == 0 and report["adapter_ranks"]
    assert report["zeros_checked_layers"] == 14
    ir = ov.Core().read_model(tmp_path / "ir" / "openvino_model.xml")
    assert not [op for op in ir.get_ops() if op.get_type_name() == "MatMul" and ".lora_" in op.get_friendly_name()]
    # every stage-1 zero is an int8 zero in the IR, checked here from the IR constants
    from transformers import AutoModelForCausalLM

    torch_zeros = {
        n: (m.weight == 0).numpy()
        for n, m in AutoModelForCausalLM.from_pretrained(trained / "sparse").model.layers.named_modules(
            prefix="model.layers"
        )
        if isinstance(m, torch.nn.Linear)
    }
    consts = {}
    for op in ir.get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8:
            node = op
            while node.get_type_name() != "MatMul" and len(node.output(0).get_target_inputs()) == 1:
                node = next(iter(node.output(0).get_target_inputs())).get_node()
            if node.get_type_name() == "MatMul":
                consts[node.get_friendly_name().split("/")[0].removeprefix("__module.")] = op.get_data()
    for name, zero in torch_zeros.items():
        assert np.all(consts[name].reshape(zero.shape)[zero] == 0), name
    # stock optimum-intel generates from it
    model = OVModelForCausalLM.from_pretrained(tmp_path / "ir")
    assert model.generate(input_ids=IDS[:, :4], max_new_tokens=3, do_sample=False).shape[1] == 7


@pytest.mark.parametrize(
    "merge, adapter, message",
    [
        (False, "sub", "trained sparsity-masked, and unmerged LoRA MatMuls would apply"),
        (True, None, "--merge needs --adapter"),
    ],
)
def test_export_refuses_the_wrong_merge_mode(trained, tmp_path, capsys, merge, adapter, message):
    args = ["export", "--model", str(trained / "sparse"), "--output", str(tmp_path / "ir")]
    args += ["--adapter", str(trained / adapter)] if adapter else []
    args += ["--merge"] if merge else []
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "ir").exists()


def test_export_merge_refuses_a_plain_adapter(trained, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    model, _ = pruned_llama()
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "plain")
    assert (
        main(
            [
                "export",
                "--model",
                str(trained / "sparse"),
                "--adapter",
                str(tmp_path / "plain"),
                "--output",
                str(tmp_path / "ir"),
                "--merge",
            ]
        )
        == 2
    )
    assert "would fill the pruned zeros" in capsys.readouterr().err
    assert not (tmp_path / "ir").exists() and not (tmp_path / "plain" / MARKER_NAME).exists()
