"""Stage 4: OpenVINO export with unmerged LoRA adapters, W8A8 quantization that keeps the stage-1 zeros."""
import json
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import CALIBRATION, make_model
from transformers import AutoModelForCausalLM

from shears_nncf.cli import main
from shears_nncf.config import ExportConfig
from shears_nncf.export import export, resolve_sparse_rate
from shears_nncf.ir import PRECISION_KEY, SPARSE_RATE_KEY, compiled_precision, ir_inputs, ov_config
from shears_nncf.models import model_skeleton
from report_shapes import assert_report_shape
from shears_nncf.reports import ExportReport

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
REPO = Path(__file__).resolve().parents[1]


def prune_rows(model, ratio=0.5):
    """Zero the smallest-magnitude `ratio` of every row of every decoder-block Linear (what stage 1 hands over)."""
    with torch.no_grad():
        for m in model.model.layers.modules():
            if isinstance(m, torch.nn.Linear):
                k = int(m.weight.shape[1] * ratio)
                m.weight.scatter_(1, m.weight.abs().argsort(dim=1)[:, :k], 0.0)
    return model


def save_adapter(model, path, **overrides):
    cfg = dict(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, rank_pattern={"up_proj": 4})
    cfg.update(overrides)
    torch.manual_seed(1)
    get_peft_model(model, LoraConfig(**cfg)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sparse_dir(tmp_path_factory):
    model, tok = make_model("llama")
    path = tmp_path_factory.mktemp("sparse") / "model"
    prune_rows(model).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(sparse_dir, tmp_path_factory):
    model, _ = make_model("llama")
    return save_adapter(prune_rows(model), tmp_path_factory.mktemp("adapter") / "sub")


def torch_peft(sparse_dir, adapter_dir):
    base = AutoModelForCausalLM.from_pretrained(sparse_dir, dtype=torch.float32).eval()
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@pytest.fixture(scope="module")
def ir_fp32(sparse_dir, adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "fp32"
    assert main(["export", "--model", str(sparse_dir), "--adapter", str(adapter_dir), "--output", str(out),
                 "--quantize", "none"]) == 0
    return out


@pytest.fixture(scope="module")
def ir_w8a8(sparse_dir, adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "w8a8"
    export(sparse_dir, out, adapter=adapter_dir, config=ExportConfig(quantize="w8a8", nsamples=12, seqlen=48),
           calibration_texts=CALIBRATION)
    return out


def read_ir(ir_dir):
    return ov.Core().read_model(Path(ir_dir) / "openvino_model.xml")


def matmul_module(op):
    return op.get_friendly_name().split("/")[0].removeprefix("__module.")


def int_weights_by_module(model):
    """Walk down from every integer Constant through its decompression ops to the MatMul that consumes it."""
    out = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() not in (ov.Type.i8, ov.Type.i4):
            continue
        node = op
        while node.get_type_name() != "MatMul":
            consumers = list(node.output(0).get_target_inputs())
            if len(consumers) != 1:
                break
            node = consumers[0].get_node()
        if node.get_type_name() == "MatMul":
            out[matmul_module(node)] = op
    return out


def unpack(const, shape):
    data = const.get_data()
    if const.get_element_type() == ov.Type.i4:
        raw = data.reshape(-1).view(np.uint8)
        data = np.stack([raw & 0xF, raw >> 4], -1).reshape(-1)[: int(np.prod(shape))]
    return data.reshape(shape)


def pruned_weights(sparse_dir):
    model = AutoModelForCausalLM.from_pretrained(sparse_dir, dtype=torch.float32)
    return {n: m.weight.detach().numpy() for n, m in model.model.layers.named_modules(prefix="model.layers")
            if isinstance(m, torch.nn.Linear)}


# ------------------------------------------------------------------------------------------ fp32


def test_fp32_ir_matches_torch_with_adapter(ir_fp32, sparse_dir, adapter_dir):
    from optimum.intel import OVModelForCausalLM

    ids = torch.tensor([[1, 17, 42, 99, 5, 230, 64, 301, 12, 7, 88, 150]])
    peft_model = torch_peft(sparse_dir, adapter_dir)
    with torch.no_grad():
        ref = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    ov_model = OVModelForCausalLM.from_pretrained(ir_fp32, ov_config=ov_config(ir_fp32, precision="f32"))
    got = ov_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-4
    # the adapter moves the logits far beyond that tolerance, so the match above includes it
    assert ((plain - ref).abs().max() / ref.abs().max()).item() > 1e-2


def test_inference_precision_is_stored_and_applied(ir_fp32, sparse_dir, adapter_dir, tmp_path):
    """f32 by default, stored in the IR and applied by ov_config; 'default' leaves OpenVINO's choice (bf16 on AMX)."""
    ids = torch.tensor([[1, 17, 42, 99, 5, 230, 64, 301, 12, 7, 88, 150]])
    with torch.no_grad():
        ref = torch_peft(sparse_dir, adapter_dir)(input_ids=ids).logits.numpy()
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
            "position_ids": np.arange(ids.shape[1])[None], "beam_idx": np.zeros(1, dtype=np.int32)}

    def rel_error(ir_dir, precision=None):
        compiled = ov.Core().compile_model(read_ir(ir_dir), "CPU", ov_config(ir_dir, precision))
        got = compiled.create_infer_request().infer(feed)["logits"]
        return compiled_precision(compiled), float(np.abs(got - ref).max() / np.abs(ref).max())

    assert json.loads((ir_fp32 / "export_report.json").read_text())["inference_precision"] == "f32"
    assert ov_config(ir_fp32)[PRECISION_KEY] == "f32"
    precision, err = rel_error(ir_fp32)
    assert precision == "f32" and err < 1e-4
    # OpenVINO's own choice: bf16 wherever the CPU has it, and then the IR is no longer the torch model
    out = tmp_path / "ir_default"
    assert main(["export", "--model", str(sparse_dir), "--adapter", str(adapter_dir), "--output", str(out),
                 "--quantize", "none", "--inference-precision", "default"]) == 0
    assert PRECISION_KEY not in ov_config(out)
    precision, err = rel_error(out)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert precision == "bf16" and err > 1e-3
    else:
        assert precision == "f32" and err < 1e-4
    assert rel_error(out, "f32")[0] == "f32"  # the override wins over what is (not) stored


def adapter_tensors(adapter_dir):
    from safetensors.numpy import load_file

    return {k.removeprefix("base_model.model.").removesuffix(".weight"): v
            for k, v in load_file(Path(adapter_dir) / "adapter_model.safetensors").items()}


def test_kv_cache_precision_is_stored_where_compile_model_applies_it(ir_fp32, sparse_dir, tmp_path):
    out = tmp_path / "u8"
    assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--quantize", "none",
                 "--kv-cache-precision", "u8"]) == 0
    core = ov.Core()
    for ir, want in ((ir_fp32, ov.Type.f16), (out, ov.Type.u8)):
        model = read_ir(ir)
        assert model.get_rt_info(["runtime_options", "KV_CACHE_PRECISION"]).astype(str) == str(want.get_type_name())
        # a plain compile, without this package's ov_config: the stock loaders get it too
        assert core.compile_model(model, "CPU").get_property("KV_CACHE_PRECISION") == want
    assert json.loads((out / "export_report.json").read_text())["kv_cache_precision"] == "u8"


def test_ir_keeps_adapters_as_separate_matmuls(ir_fp32, sparse_dir, adapter_dir):
    model = read_ir(ir_fp32)
    matmuls = {matmul_module(op): op for op in model.get_ops() if op.get_type_name() == "MatMul"}
    weights, lora = pruned_weights(sparse_dir), adapter_tensors(adapter_dir)
    adapted = [n for n in weights if n.rsplit(".", 1)[-1] in TARGETS]
    assert len(adapted) == 10
    for name in adapted:
        for ab in "AB":
            np.testing.assert_array_equal(matmuls[f"{name}.lora_{ab}.default"].input_value(1).get_node().get_data(),
                                          lora[f"{name}.lora_{ab}"])
        base = matmuls[f"{name}.base_layer"].input_value(1).get_node()
        assert base.get_type_name() == "Constant"
        # the base weight is the sparse weight itself, bit for bit: nothing was merged into it
        np.testing.assert_array_equal(base.get_data(), weights[name])
    rank = {n: matmuls[f"{n}.lora_A.default"].input_value(1).get_node().get_output_shape(0)[0] for n in adapted}
    assert {n.rsplit(".", 1)[-1]: r for n, r in rank.items()} == {"q_proj": 8, "k_proj": 8, "v_proj": 8, "up_proj": 4, "down_proj": 8}
    report = json.loads((ir_fp32 / "export_report.json").read_text())
    assert report["adapters_unmerged"] and report["lora_matmuls"] == 20 and report["fused_lora_A"] == {}
    assert report["adapter_ranks"] == rank


def test_fuse_lora_gives_layers_that_share_an_input_one_a(ir_fp32, sparse_dir, adapter_dir, tmp_path):
    out = tmp_path / "fused"
    assert main(["export", "--model", str(sparse_dir), "--adapter", str(adapter_dir), "--output", str(out),
                 "--quantize", "none", "--fuse-lora"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    # per block: one A for q/k/v (they read the same normed input), up's and down's own A, five B's
    assert report["lora_matmuls"] == 2 * (3 + 5)
    matmuls = {matmul_module(op): op for op in read_ir(out).get_ops() if op.get_type_name() == "MatMul"}
    lora = adapter_tensors(adapter_dir)
    for i in range(2):
        block = f"model.layers.{i}"
        assert f"{block}.mlp.up_proj.lora_A.default" in matmuls and f"{block}.mlp.down_proj.lora_A.default" in matmuls
        assert not any(f"{block}.self_attn.{m}.lora_A.default" in matmuls for m in ("q_proj", "k_proj", "v_proj"))
        members = [f"{block}.self_attn.{m}" for m in ("k_proj", "q_proj", "v_proj")]
        assert report["fused_lora_A"][f"{block}.self_attn.k_proj+q_proj+v_proj.lora_A"] == members
        fused = matmuls[f"{block}.self_attn.k_proj+q_proj+v_proj.lora_A.fused"]
        # same input as the base q_proj, the members' A's stacked in order, split back into each member's B
        assert fused.input_value(0) == matmuls[f"{block}.self_attn.q_proj.base_layer"].input_value(0)
        np.testing.assert_array_equal(fused.input_value(1).get_node().get_data(),
                                      np.concatenate([lora[f"{m}.lora_A"] for m in members]))
        split = next(iter(fused.output(0).get_target_inputs())).get_node()
        assert split.get_type_name() == "VariadicSplit"
        for k, m in enumerate(members):
            (target,) = split.output(k).get_target_inputs()
            assert matmul_module(target.get_node()) == f"{m}.lora_B.default"
    # and the same numbers as one A per layer
    ids = np.random.default_rng(0).integers(3, 300, size=(1, 12))
    fused_logits, unfused = (ov.Core().compile_model(read_ir(d), "CPU", ov_config(d, "f32")).create_infer_request()
                             .infer(ir_inputs(ids))["logits"] for d in (out, ir_fp32))
    np.testing.assert_allclose(fused_logits, unfused, rtol=0, atol=1e-5 * np.abs(unfused).max())


# ------------------------------------------------------------------------------------------ w8a8


def test_w8a8_keeps_every_pruned_zero(ir_w8a8, sparse_dir):
    model = read_ir(ir_w8a8)
    ints = int_weights_by_module(model)
    weights = pruned_weights(sparse_dir)
    report = json.loads((ir_w8a8 / "export_report.json").read_text())
    for name, w in weights.items():
        const = ints.get(f"{name}.base_layer", ints.get(name))
        assert const is not None and const.get_element_type() == ov.Type.i8, name
        q = unpack(const, w.shape)
        assert np.all(q[w == 0] == 0), name
        assert (w == 0).mean() == pytest.approx(0.5, abs=0.01)
        assert report["layers"][name]["sparsity"] == pytest.approx((q == 0).mean(), abs=1e-4)
    # activations are quantized too (W8A8, not weight-only), except the inputs of the MLP output projection,
    # which keep float activations by default and hold int8 weight-only constants, and of the 64x64 projections,
    # kept off OpenVINO's sparse kernel because it crashes on them (with their LoRA MatMuls)
    guarded = [n for n, w in weights.items() if w.shape == (64, 64)]
    assert [n.rsplit(".", 1)[-1] for n in guarded] == ["q_proj", "o_proj"] * 2
    quantized_input = {}
    for op in model.get_ops():
        if op.get_type_name() == "MatMul" and matmul_module(op) in ints:
            quantized_input[matmul_module(op)] = op.input_value(0).get_node().get_type_name() == "FakeQuantize"
    assert len(quantized_input) == 14 + 1 + 20  # block projections, lm_head, LoRA A/B
    for module, fq in quantized_input.items():
        base = module.split(".lora_")[0].removesuffix(".base_layer")
        assert fq == (".down_proj" not in module and module != "lm_head" and base not in guarded), module
    assert report["float_input_layers"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"] + guarded
    assert list(report["sparse_kernel_guarded_layers"]) == guarded
    assert report["sparse_kernel_layers"] == 12 - len(guarded)
    assert {k: v["activations"] for k, v in report["layers"].items() if v["role"] == "base" and "layers" in k} == {
        n: "float" if n.endswith("down_proj") or n in guarded else "int8" for n in weights}
    assert report["quantize"] == "w8a8" and report["zeros_preserved"] and report["zeros_checked_layers"] == 14


def test_w8a8_float_input_layers_in_int4_keep_every_zero(ir_w8a8, sparse_dir, adapter_dir, tmp_path):
    out = tmp_path / "ir"
    report = export(sparse_dir, out, adapter=adapter_dir, calibration_texts=CALIBRATION,
                    config=ExportConfig(quantize="w8a8", nsamples=12, seqlen=48, float_input_weights="int4"))
    model = read_ir(out)
    ints = int_weights_by_module(model)
    weights = pruned_weights(sparse_dir)
    float_inputs = set(report["float_input_layers"])
    for name, w in weights.items():
        const = ints[f"{name}.base_layer" if f"{name}.base_layer" in ints else name]
        # the float-input layers (down_proj, the guarded 64x64 ones) int4, the W8A8 ones int8 as before
        assert const.get_element_type() == (ov.Type.i4 if name in float_inputs else ov.Type.i8), name
        assert np.all(unpack(const, w.shape)[w == 0] == 0), name
    # the output head stays int8 (OpenVINO's int4 format keeps it so), the LoRA MatMuls int8 too
    assert ints["lm_head"].get_element_type() == ov.Type.i8
    assert {c.get_element_type() for m, c in ints.items() if ".lora_" in m} == {ov.Type.i8}
    assert sum(".lora_" in m for m in ints) == 20
    # the W8A8 layers and their activations are as in the default export
    default = json.loads((ir_w8a8 / "export_report.json").read_text())
    assert report["float_input_layers"] == default["float_input_layers"]
    assert report["sparse_kernel_layers"] == default["sparse_kernel_layers"]
    assert {k: v["activations"] for k, v in report["layers"].items()} == {k: v["activations"] for k, v in default["layers"].items()}
    assert "int4 weights" in report["precision"] and report["zeros_checked_layers"] == 14
    # and the IR still computes the adapted model
    ids = torch.tensor([[1, 17, 42, 99, 5, 230, 64, 301, 12, 7, 88, 150]])
    with torch.no_grad():
        ref = torch_peft(sparse_dir, adapter_dir)(input_ids=ids).logits.numpy()
    got = ov.Core().compile_model(model, "CPU", ov_config(out)).create_infer_request().infer(ir_inputs(ids.numpy()))["logits"]
    assert float((got * ref).sum() / np.linalg.norm(got) / np.linalg.norm(ref)) > 0.95


def test_w8a8_ignored_scopes_select_float_inputs(sparse_dir, adapter_dir, tmp_path, capsys):
    import shears_nncf.export as ex

    skeleton = model_skeleton(str(sparse_dir), False)
    assert ex.float_input_modules(skeleton, None) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj",
                                                      "lm_head"]
    assert ex.float_input_modules(skeleton, []) == []
    assert ex.float_input_modules(skeleton, [r"model\.layers\.1\..*proj", "lm_head"]) == [
        f"model.layers.1.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]
    # a name that matches nothing fails before anything is written
    out = tmp_path / "ir"
    assert main(["export", "--model", str(sparse_dir), "--adapter", str(adapter_dir), "--output", str(out),
                 "--ignored-scopes", "down_prj"]) == 2
    assert "'down_prj' matches no Linear" in _only_line(capsys.readouterr().err)
    assert not out.exists()


def test_sparse_rate_auto_is_stored_and_applied(ir_w8a8, sparse_dir):
    report = json.loads((ir_w8a8 / "export_report.json").read_text())
    # independent of the report: the least sparse pruned projection of the saved torch model, minus the 0.05 margin
    least = min(float((w == 0).mean()) for w in pruned_weights(sparse_dir).values())
    assert least >= 0.5
    expected = round(least - 0.05, 2)
    assert report["sparse_rate"] == pytest.approx(expected)
    assert ov_config(ir_w8a8) == {SPARSE_RATE_KEY: pytest.approx(expected), PRECISION_KEY: "f32"}
    compiled = ov.Core().compile_model(read_ir(ir_w8a8), "CPU", ov_config(ir_w8a8))
    assert compiled.get_property(SPARSE_RATE_KEY) == pytest.approx(expected)


def test_stock_optimum_intel_loads_and_generates(ir_w8a8, sparse_dir, adapter_dir):
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer ops)
    from optimum.intel import OVModelForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ir_w8a8)
    model = OVModelForCausalLM.from_pretrained(ir_w8a8)
    inputs = tok("The quick brown fox", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6
    # W8A8 logits follow the torch model with the adapter, and clearly not the one without: the adapter is in the IR
    with torch.no_grad():
        peft_model = torch_peft(sparse_dir, adapter_dir)
        ref = peft_model(**inputs).logits
        with peft_model.disable_adapter():
            bare = peft_model(**inputs).logits
    got = model(**inputs).logits

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()

    # measured on an AMX Xeon: 0.998 with the adapter, 0.18 without (the adapter's own effect: cos(ref, bare) 0.18)
    assert cos(got, ref) > 0.97 and cos(got, bare) < 0.5, (cos(got, ref), cos(got, bare))
    # the OpenVINO tokenizer converted alongside gives the Hugging Face token ids
    ov_tok = ov.Core().compile_model(ir_w8a8 / "openvino_tokenizer.xml", "CPU")
    ids = ov_tok(["The quick brown fox"])["input_ids"]
    assert ids.tolist() == inputs["input_ids"].tolist()


@pytest.mark.parametrize("mode,dtype", [("int8-weights", "i8"), ("none", "f32")])
def test_adapter_quantize_gives_the_lora_matmuls_float_inputs(ir_w8a8, sparse_dir, adapter_dir, tmp_path, mode, dtype):
    out = tmp_path / mode
    report = export(sparse_dir, out, adapter=adapter_dir, calibration_texts=CALIBRATION,
                    config=ExportConfig(quantize="w8a8", nsamples=12, seqlen=48, adapter_quantize=mode))
    default = json.loads((ir_w8a8 / "export_report.json").read_text())["layers"]
    lora = {k: v for k, v in report["layers"].items() if v["role"] != "base"}
    assert len(lora) == 20 and {(v["activations"], v["dtype"]) for v in lora.values()} == {("float", dtype)}
    # the base layers are quantized as in the default export, every pruned zero checked
    assert {k: (v["activations"], v["dtype"]) for k, v in report["layers"].items() if v["role"] == "base"} == {
        k: (v["activations"], v["dtype"]) for k, v in default.items() if v["role"] == "base"}
    assert report["zeros_checked_layers"] == 14 and report["config"]["adapter_quantize"] == mode
    # the float LoRA A's read the layer input itself, not SmoothQuant's rescaled one: the logits follow the torch model
    ids = torch.tensor([[1, 17, 42, 99, 5, 230, 64, 301, 12, 7, 88, 150]])
    with torch.no_grad():
        peft_model = torch_peft(sparse_dir, adapter_dir)
        ref = peft_model(input_ids=ids).logits.numpy()
        with peft_model.disable_adapter():
            bare = peft_model(input_ids=ids).logits.numpy()
    got = ov.Core().compile_model(read_ir(out), "CPU", ov_config(out)).create_infer_request().infer(ir_inputs(ids.numpy()))["logits"]

    def cos(a, b):
        return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(got, ref) > 0.97 and cos(got, bare) < 0.5, (cos(got, ref), cos(got, bare))


def test_fuse_lora_in_w8a8_leaves_float_input_layers_apart(sparse_dir, adapter_dir, tmp_path):
    out = tmp_path / "fused"
    report = export(sparse_dir, out, adapter=adapter_dir, calibration_texts=CALIBRATION,
                    config=ExportConfig(quantize="w8a8", nsamples=12, seqlen=48, fuse_lora=True))
    # q_proj (64x64) keeps float inputs against the kernel crash, so only k and v share an A, W8A8 like their layers
    assert report["fused_lora_A"] == {f"model.layers.{i}.self_attn.k_proj+v_proj.lora_A": [f"model.layers.{i}.self_attn.{m}" for m in ("k_proj", "v_proj")]
                                      for i in range(2)}
    layers = report["layers"]
    for i in range(2):
        fused = layers[f"model.layers.{i}.self_attn.k_proj+v_proj.lora_A"]
        assert fused["activations"] == "int8" and fused["dtype"] == "i8" and fused["shape"] == [16, 64]
        assert layers[f"model.layers.{i}.self_attn.q_proj.lora_A"]["activations"] == "float"
    assert report["lora_matmuls"] == 18 and report["zeros_checked_layers"] == 14


# ------------------------------------------------------------------------------------- CLI paths


def test_optimum_cli_export_shears_int8_weights(sparse_dir, tmp_path, monkeypatch):
    """`optimum-cli export shears` (found through the optimum.commands.register namespace) gives the same export."""
    from optimum.commands import optimum_cli

    out = tmp_path / "ir"
    monkeypatch.syspath_prepend(str(REPO))  # where the namespace portion sits until the package is installed
    monkeypatch.setattr(sys, "argv", ["optimum-cli", "export", "shears", "-m", str(sparse_dir), "--weight-format", "int8",
                                      "--sparse-rate", "0.3", str(out)])
    optimum_cli.main()
    report = json.loads((out / "export_report.json").read_text())
    assert report["quantize"] == "int8-weights" and not report["sparse_kernel_eligible"]
    assert ov_config(out) == {SPARSE_RATE_KEY: pytest.approx(0.3), PRECISION_KEY: "f32"}
    assert not report["adapters_unmerged"] and report["lora_matmuls"] == 0
    ints = int_weights_by_module(read_ir(out))
    for name, w in pruned_weights(sparse_dir).items():
        assert ints[name].get_element_type() == ov.Type.i8
        assert np.all(unpack(ints[name], w.shape)[w == 0] == 0), name


def test_int4_weights_keep_zeros(sparse_dir, tmp_path):
    report = export(sparse_dir, tmp_path / "ir", config=ExportConfig(quantize="int4-weights"))
    ints = int_weights_by_module(read_ir(tmp_path / "ir"))
    for name, w in pruned_weights(sparse_dir).items():
        assert ints[name].get_element_type() == ov.Type.i4
        assert np.all(unpack(ints[name], w.shape)[w == 0] == 0), name
    assert report["precision"].startswith("int4") and report["zeros_preserved"]
    assert_report_shape(report, ExportReport)
    assert json.loads((tmp_path / "ir" / "export_report.json").read_text()) == json.loads(json.dumps(report))


@pytest.mark.parametrize("setting, sparsities, expected", [
    ("auto", [0.5, 0.52, 0.7], 0.45),
    ("auto", [0.7, 0.71], 0.65),
    ("auto", [0.0, 0.002], None),  # dense model: leave the sparse path off
    ("auto", [0.5, 0.0, 0.6], 0.45),  # a layer left dense does not pull the rate down
    ("auto", [0.12], 0.07),
    (0.3, [0.5], 0.3),
    (0.8, [0.5], 0.8),  # above the sparsest layer: kept, with a warning
])
def test_sparse_rate_resolution(setting, sparsities, expected):
    assert resolve_sparse_rate(setting, sparsities) == (pytest.approx(expected) if expected is not None else None)


def _only_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_adapter_for_another_model(sparse_dir, tmp_path, capsys):
    other, _ = make_model("llama", intermediate_size=128)
    bad = save_adapter(other, tmp_path / "bad_adapter")
    out = tmp_path / "ir"
    assert main(["export", "--model", str(sparse_dir), "--adapter", str(bad), "--output", str(out), "--quantize", "none"]) == 2
    line = _only_line(capsys.readouterr().err)
    assert "different model" in line and "down_proj is 96->64 here but 128->64" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ir")]


def test_cli_bad_sparse_rate(sparse_dir, tmp_path, capsys):
    out = tmp_path / "ir"
    assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--sparse-rate", "2"]) == 2
    assert "--sparse-rate" in _only_line(capsys.readouterr().err)
    assert not out.exists()


def test_cli_missing_model(tmp_path, capsys):
    out = tmp_path / "ir"
    assert main(["export", "--model", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert "does not exist" in _only_line(capsys.readouterr().err)
    assert not out.exists()


# ------------------------------------------------------------------------------- outlier split


def test_outlier_split_linear_computes_the_linear():
    from shears_nncf.outliers import OutlierSplitLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(192, 64, bias=True).double()
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.03] = 0.0
    channels = list(range(3, 192, 3))[:64]
    split = OutlierSplitLinear(lin, channels)
    x = torch.randn(2, 5, 192, dtype=torch.float64)
    assert torch.allclose(split(x), lin(x), atol=1e-12)
    keep = [c for c in range(192) if c not in channels]
    assert torch.equal(split.weight, lin.weight[:, keep]) and torch.equal(split.outliers.weight, lin.weight[:, channels])
    assert int((split.weight == 0).sum() + (split.outliers.weight == 0).sum()) == int((lin.weight == 0).sum())


@pytest.fixture(scope="module")
def wide_mlp(tmp_path_factory):
    """A pruned llama whose down_proj is 64x192 (splittable into 64x128 + 64x64), with planted outlier channels."""
    model, tok = make_model("llama", intermediate_size=192)
    prune_rows(model)
    planted = [5, 77, 150]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[planted] *= 300.0  # these down_proj input channels dwarf the rest
    path = tmp_path_factory.mktemp("wide") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model2, _ = make_model("llama", intermediate_size=192)
    adapter = save_adapter(prune_rows(model2), tmp_path_factory.mktemp("wide_adapter") / "sub")
    return path, adapter, planted


def test_w8a8_splits_mlp_output_outlier_channels(wide_mlp, tmp_path):
    path, adapter, planted = wide_mlp
    report = export(path, tmp_path / "split", adapter=adapter, config=ExportConfig(nsamples=12, seqlen=48, outlier_channels=64),
                    calibration_texts=CALIBRATION)
    assert_report_shape(report, ExportReport)
    weights = pruned_weights(path)
    downs = [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    assert sorted(report["outlier_split_layers"]) == downs and report["outlier_channels"] == 64
    for name in downs:
        info = report["outlier_split_layers"][name]
        assert info["module"] == f"{name}.base_layer.outliers"
        channels = info["channels"]
        assert len(channels) == 64 and set(planted) <= set(channels)
        # the main part is W8A8 (sparse-kernel eligible), the outlier part and the adapter's MatMuls keep float inputs
        main, part = report["layers"][name], report["layers"][f"{name}.outliers"]
        assert main["shape"] == [64, 128] and main["activations"] == "int8" and main["dtype"] == "i8"
        assert part["shape"] == [64, 64] and part["activations"] == "float" and part["dtype"] == "i8"
        assert report["layers"][f"{name}.lora_A"]["activations"] == "float"
        assert info["module"] in report["float_input_layers"] and f"{name}.lora_A" in report["float_input_layers"]
        # every pruned zero of the torch weight is a zero of one of the two IR constants, at its own column
        ints = int_weights_by_module(read_ir(tmp_path / "split"))
        w = weights[name]
        keep = [c for c in range(w.shape[1]) if c not in channels]
        q_main = unpack(ints[f"{name}.base_layer"], (64, 128))
        q_out = unpack(ints[f"{name}.base_layer.outliers"], (64, 64))
        assert np.all(q_main[w[:, keep] == 0] == 0) and np.all(q_out[w[:, channels] == 0] == 0)
        # and the zeros of the two parts add up to the layer's (int8 rounding may add a few, never remove one)
        assert int((q_main == 0).sum() + (q_out == 0).sum()) >= int((w == 0).sum()) == w.size // 2
        assert main["sparsity"] == pytest.approx(float((q_main == 0).mean()), abs=1e-4)
    assert report["sparse_kernel_layers"] == 14 - len(report["sparse_kernel_guarded_layers"])  # every pruned layer but the guarded
    assert "lm_head" in report["float_input_layers"] and report["zeros_checked_layers"] == 14 + 2


def test_outlier_split_fp32_ir_matches_torch(wide_mlp, tmp_path):
    """With W8A8 off for everything but the split's plumbing, the split IR computes the torch model."""
    import shears_nncf.export as ex

    path, adapter, _ = wide_mlp
    peft = torch_peft(path, adapter)
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 11, 8]])
    with torch.no_grad():
        ref = peft(input_ids=ids).logits[0].numpy()
    model = peft.base_model.model
    stats = {f"model.layers.{i}.mlp.down_proj.base_layer": torch.rand(192) for i in range(2)}
    from shears_nncf.outliers import split_outlier_channels

    split_outlier_channels(model, stats, 64)
    with torch.no_grad():
        got = model(input_ids=ids).logits[0].numpy()
    assert np.abs(got - ref).max() < 1e-4
    tok = ex.load_tokenizer(str(path))
    ex._export_ir(model, tok, tmp_path, False)
    from shears_nncf.ir import ir_inputs

    compiled = ov.Core().compile_model(read_ir(tmp_path), "CPU", {PRECISION_KEY: "f32"})
    out = compiled.create_infer_request().infer(ir_inputs(ids.numpy()))[compiled.output("logits")][0]
    assert np.abs(out - ref).max() < 1e-3


def test_outlier_split_leaves_layers_that_runtime_adapters_tap_whole(wide_mlp, tmp_path):
    """GenAI's run-time LoRA taps the base MatMul's input, which the split narrows: adapted layers stay whole."""
    path, adapter, _ = wide_mlp
    report = export(path, tmp_path / "rt", adapter=adapter, calibration_texts=CALIBRATION,
                    config=ExportConfig(nsamples=12, seqlen=48, outlier_channels=64, adapter_mode="runtime"))
    assert report["outlier_split_layers"] == {} and report["outlier_channels"] == 0
    assert {n for n in report["float_input_layers"] if "down_proj" in n} == {f"model.layers.{i}.mlp.down_proj" for i in range(2)}


def test_cli_bad_outlier_channels(sparse_dir, tmp_path, capsys):
    out = tmp_path / "ir"
    assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--outlier-channels", "96"]) == 2
    assert _only_line(capsys.readouterr().err).endswith("--outlier-channels must be 0 or a multiple of 64, got 96")
    assert not out.exists()
    # the split applies to the default's float-input layers: with explicit scopes it would silently do nothing
    assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--outlier-channels", "64",
                 "--ignored-scopes", "lm_head"]) == 2
    assert "drop one of them" in _only_line(capsys.readouterr().err)
    assert not out.exists()


def test_cli_float_input_weights_needs_w8a8(sparse_dir, tmp_path, capsys):
    out = tmp_path / "ir"
    for extra in (["--quantize", "int8-weights"], ["--ignored-scopes", "down_proj"], ["--ignored-scopes", ""]):
        assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--float-input-weights", "int4", *extra]) == 2
        assert "applies only to --quantize w8a8 with the default float-input layers" in _only_line(capsys.readouterr().err)
    assert main(["export", "--model", str(sparse_dir), "--output", str(out), "--float-input-weights", "int2"]) == 2
    assert "int2" in _only_line(capsys.readouterr().err)
    assert not out.exists()


def test_smooth_quant_runs_in_float32_and_outside_the_float_input_layers(ir_fp32, sparse_dir, monkeypatch):
    """NNCF's SmoothQuant scales come out float64 (its numpy quantile is float64), doubling the rescaled weights it
    holds, and it rescales the ignored (float-input) layers too; quantize_ir keeps the scales float32, equal to
    NNCF's to float32 precision, rescales only the W8A8 layers, and leaves NNCF as it was after."""
    import nncf
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant
    from nncf.quantization.algorithms.smooth_quant.openvino_backend import OVSmoothQuantAlgoBackend
    from nncf.tensor import Tensor, TensorDataType

    from shears_nncf.export import float_input_modules, quantize_ir, smooth_quant_as_intended

    rng = np.random.default_rng(0)
    act, w = (Tensor(rng.uniform(0.1, 4.0, 64).astype(np.float32)) for _ in range(2))
    ref, _ = SmoothQuant._calculate_scale_and_ratio(act, w, 0.95)
    assert ref.dtype == TensorDataType.float64, "NNCF now computes SmoothQuant's scales in float32: drop that part of smooth_quant_as_intended"
    with smooth_quant_as_intended() as applied:
        scales, _ = SmoothQuant._calculate_scale_and_ratio(act, w, 0.95)
    assert applied and scales.dtype == TensorDataType.float32
    np.testing.assert_allclose(scales.data, ref.data, rtol=1e-6)

    updates, update = {}, OVSmoothQuantAlgoBackend.weight_update_command
    monkeypatch.setattr(OVSmoothQuantAlgoBackend, "weight_update_command", staticmethod(
        lambda node, graph, value: (updates.__setitem__(node.node_name, value.dtype), update(node, graph, value))[1]))
    ids = rng.integers(3, 300, (4, 16))
    dataset = nncf.Dataset([ir_inputs(ids[i:i + 1]) for i in range(len(ids))])
    float_inputs = float_input_modules(model_skeleton(str(sparse_dir)), None)
    assert any(n.endswith("down_proj") for n in float_inputs)
    quantize_ir(ov.Core().read_model(ir_fp32 / "openvino_model.xml"), "w8a8", dataset, subset_size=len(ids), float_inputs=float_inputs)
    assert updates and set(updates.values()) == {np.dtype(np.float32)}, f"SmoothQuant rescaled weights in {set(updates.values())}"
    smoothed = {n.split("/")[0].removeprefix("__module.").replace(".base_layer", "") for n in updates}
    assert not [n for n in smoothed if any(n == m or n.startswith(m + ".") for m in float_inputs)], "float-input layers rescaled"
    assert {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")} <= smoothed
    assert SmoothQuant._calculate_scale_and_ratio(act, w, 0.95)[0].dtype == TensorDataType.float64  # NNCF as it was
