"""Deploying on OpenVINO GenAI: one base IR, sub-adapters applied at run time, checked against torch + PEFT."""

import json

import numpy as np
import openvino as ov
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from test_export import prune_rows, save_adapter, sparse_dir  # noqa: F401  (a fixture)
from tiny_models import make_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from shears_nncf.adapters import mark_masked
from shears_nncf.cli import main
from shears_nncf.config import EvalConfig, ExportConfig
from shears_nncf.exporting import export
from shears_nncf.genai import load_pipeline, write_genai_adapter
from shears_nncf.ir import IR_NAME, ir_inputs, ir_layers, module_of

N = 10  # new tokens per greedy comparison
PROMPTS = ["The quick brown fox", "Sparse language models keep half"]


def _adapter(path, **overrides):
    model, _ = make_model("llama")
    return save_adapter(prune_rows(model), path, **overrides)  # random A and B (init_lora_weights=False)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two sub-adapters with per-layer ranks and alphas (the case GenAI's one scalar cannot express)."""
    root = tmp_path_factory.mktemp("adapters")
    a = _adapter(root / "task_a", alpha_pattern={"down_proj": 4})
    b = _adapter(root / "task_b", lora_alpha=32, rank_pattern={"up_proj": 2, "q_proj": 6})
    return a, b


def torch_greedy(model, ids, n=N):
    """Plain argmax decoding with a full forward per token: no EOS handling, no generation config."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -n:].tolist()


def torch_model(sparse_dir, adapter=None):
    base = AutoModelForCausalLM.from_pretrained(sparse_dir, dtype=torch.float32).eval()
    return base if adapter is None else PeftModel.from_pretrained(base, adapter).eval()


@pytest.fixture(scope="module")
def runtime_ir(sparse_dir, adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("rt") / "ir"
    return out, export(
        sparse_dir, out, adapter=list(adapters), config=ExportConfig(quantize="none", adapter_mode="runtime")
    )


@pytest.fixture(scope="module")
def in_ir(sparse_dir, adapters, tmp_path_factory):
    out = tmp_path_factory.mktemp("inir") / "ir"
    export(sparse_dir, out, adapter=adapters[0], config=ExportConfig(quantize="none"))
    return out


def test_adapter_file_folds_each_layers_scaling_into_b(sparse_dir, adapters, tmp_path):
    a, b = adapters
    report = write_genai_adapter(b, sparse_dir, tmp_path / "b.safetensors")
    source = load_file(b / "adapter_model.safetensors")
    folded = load_file(tmp_path / "b.safetensors")
    assert set(folded) == set(source)  # PEFT's names, which GenAI matches after stripping base_model.model.
    cfg = json.loads((b / "adapter_config.json").read_text())
    expected = {
        "q_proj": 32 / 6,
        "up_proj": 32 / 2,
        "k_proj": 32 / 8,
        "v_proj": 32 / 8,
        "down_proj": 32 / 8,
    }  # alpha / r
    for key, value in source.items():
        proj = key.split(".lora_")[0].rsplit(".", 1)[-1]
        want = value * expected[proj] if ".lora_B." in key else value
        torch.testing.assert_close(folded[key], want.float())
    assert cfg["rank_pattern"] == {"up_proj": 2, "q_proj": 6}
    assert report["alpha"] == 1.0 and set(report["ranks"].values()) == {2, 6, 8}
    assert json.loads((tmp_path / "b.json").read_text())["layers"] == 10


def test_runtime_export_writes_one_base_ir_and_a_file_per_adapter(runtime_ir, adapters):
    out, report = runtime_ir
    assert report["config"]["adapter_mode"] == "runtime" and report["lora_matmuls"] == 0
    assert sorted(report["genai_adapters"]) == ["task_a", "task_b"]
    assert sorted(p.name for p in (out / "genai_adapters").glob("*.safetensors")) == [
        "task_a.safetensors",
        "task_b.safetensors",
    ]
    layers = ir_layers(ov.Core().read_model(out / IR_NAME))
    assert {v["role"] for v in layers.values()} == {"base"}  # the calibration adapter was cut out again
    assert "Adapter('task_a.safetensors'), 1.0)" in report["genai_adapters"]["task_a"]["load"]


def test_runtime_adapters_reproduce_torch_peft_and_the_in_ir_export(runtime_ir, in_ir, sparse_dir, adapters):
    out, _ = runtime_ir
    tok = AutoTokenizer.from_pretrained(sparse_dir)
    pipe = load_pipeline(out, ["task_a", "task_b"], precision="f32")
    baked = load_pipeline(in_ir, precision="f32")
    base, peft_a, peft_b = (
        torch_model(sparse_dir),
        torch_model(sparse_dir, adapters[0]),
        torch_model(sparse_dir, adapters[1]),
    )
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        want = {None: torch_greedy(base, ids), "task_a": torch_greedy(peft_a, ids), "task_b": torch_greedy(peft_b, ids)}
        assert len({tuple(v) for v in want.values()}) == 3  # the adapters change the output, or nothing is tested
        for name in (None, "task_a", "task_b", None, "task_a"):  # switched per call, back and forth, on one pipeline
            assert pipe.generate_ids(ids, N, name).tokens == want[name], (prompt, name)
        assert baked.generate_ids(ids, N).tokens == want["task_a"]


def test_switching_on_a_long_prompt_reuses_no_other_adapters_kv_cache(runtime_ir, sparse_dir, adapters):
    """A prompt that fills KV-cache blocks, generated with task_a, then task_b, then none, on one pipeline: each as
    torch.

    GenAI's default prefix cache would hand the second and third calls task_a's KV blocks
    (benchmarks/repro/genai_prefix_cache_adapter.py); load_pipeline turns it off when adapters are registered.
    """
    out, _ = runtime_ir
    ids = np.random.default_rng(0).integers(3, 300, size=200).tolist()
    pipe = load_pipeline(out, ["task_a", "task_b"], precision="f32")
    want = {
        "task_a": torch_greedy(torch_model(sparse_dir, adapters[0]), ids),
        "task_b": torch_greedy(torch_model(sparse_dir, adapters[1]), ids),
        None: torch_greedy(torch_model(sparse_dir), ids),
    }
    for name in ("task_a", "task_b", None, "task_a"):
        assert pipe.generate_ids(ids, N, name).tokens == want[name], name


def test_emulated_runtime_lora_gives_genais_tokens(runtime_ir, sparse_dir):
    """The plain-OpenVINO rebuild of GenAI's LoRA graph (used to read logits and kernels) decodes as GenAI does."""
    from safetensors.numpy import load_file as load_np

    from shears_nncf.genai import emulate_runtime_lora

    out, _ = runtime_ir
    model = ov.Core().read_model(out / IR_NAME)
    feeds = emulate_runtime_lora(model, load_np(out / "genai_adapters" / "task_b.safetensors"))
    assert len(feeds) == 3 * 10
    request = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    ids = AutoTokenizer.from_pretrained(sparse_dir)(PROMPTS[0]).input_ids
    seq = list(ids)
    for _ in range(N):  # full recompute each step: no cache to get wrong
        request.reset_state()
        seq.append(int(request.infer({**ir_inputs(np.array([seq])), **feeds})["logits"][0, -1].argmax()))
    pipe = load_pipeline(out, ["task_b"], precision="f32")
    assert seq[len(ids) :] == pipe.generate_ids(ids, N, "task_b").tokens


def test_peft_folder_is_converted_on_the_fly(runtime_ir, sparse_dir, adapters):
    out, _ = runtime_ir
    tok = AutoTokenizer.from_pretrained(sparse_dir)
    ids = tok(PROMPTS[0]).input_ids
    pipe = load_pipeline(out, [str(adapters[1])], precision="f32")
    assert pipe.generate_ids(ids, N, "task_b").tokens == torch_greedy(torch_model(sparse_dir, adapters[1]), ids)


def test_w8a8_runtime_base_is_the_plain_base_export(sparse_dir, adapters, tmp_path, calib_file):
    """One base for every sub-adapter: the run-time export's IR is the export of the model without adapter."""
    cfg = dict(quantize="w8a8", calibration=str(calib_file), nsamples=8, seqlen=32, sparse_rate=1.0)
    rt = export(sparse_dir, tmp_path / "rt", adapter=list(adapters), config=ExportConfig(adapter_mode="runtime", **cfg))
    plain = export(sparse_dir, tmp_path / "plain", config=ExportConfig(**cfg))
    assert rt["lora_matmuls"] == 0 and rt["zeros_checked_layers"] == plain["zeros_checked_layers"] == 14
    assert (tmp_path / "rt" / "openvino_model.bin").read_bytes() == (
        tmp_path / "plain" / "openvino_model.bin"
    ).read_bytes()
    assert rt["layers"] == plain["layers"]


def test_adapter_file_undoes_smoothquant_on_the_input_genai_feeds_it(sparse_dir, adapters, tmp_path, calib_file):
    """GenAI's LoRA branch reads the W8A8 MatMul's input, which SmoothQuant scaled by c: A / c must give back A x.

    Checked on the IR itself: the tensor GenAI taps (the q_proj MatMul's input) times the file's A against the
    torch layer's true input times PEFT's A, and the unmodified A on the tap shown to be far off.
    """
    out = tmp_path / "w8a8"
    export(
        sparse_dir,
        out,
        adapter=[adapters[0]],
        config=ExportConfig(
            quantize="w8a8", adapter_mode="runtime", calibration=str(calib_file), nsamples=8, seqlen=32, sparse_rate=1.0
        ),
    )
    report = json.loads((out / "genai_adapters" / "task_a.json").read_text())
    module = "model.layers.0.self_attn.q_proj"
    assert module in report["smoothquant_compensated_layers"]
    key = f"base_model.model.{module}.lora_A.weight"
    a_file = load_file(out / "genai_adapters" / "task_a.safetensors")[key]
    a_peft = load_file(adapters[0] / "adapter_model.safetensors")[key]

    ir = ov.Core().read_model(out / IR_NAME)
    matmul = next(
        op
        for op in ir.get_ordered_ops()
        if op.get_type_name() == "MatMul"
        and (module_of(op.get_friendly_name()) or "").removesuffix(".base_layer") == module
    )
    ir.add_outputs([matmul.input_value(0)])
    ids = np.array([AutoTokenizer.from_pretrained(sparse_dir)(PROMPTS[1]).input_ids])
    result = (
        ov.Core()
        .compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        .create_infer_request()
        .infer(ir_inputs(ids))
    )
    tap = torch.from_numpy(np.asarray(result[len(ir.outputs) - 1])).reshape(-1, a_file.shape[1])

    seen = {}
    model = torch_model(sparse_dir)
    model.get_submodule(module).register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        model(torch.from_numpy(ids))
    want = seen["x"].reshape(-1, a_file.shape[1]) @ a_peft.T
    rel = lambda got: float((got - want).norm() / want.norm())  # noqa: E731
    assert rel(tap @ a_file.T) < 0.05  # only the int8 activation rounding is left
    assert rel(tap @ a_peft.T) > 0.2  # without the compensation the branch is off by the smoothing factors


def test_eval_through_genai_matches_torch(runtime_ir, sparse_dir, adapters, tmp_path):
    from shears_nncf.evaluation import evaluate

    records = [
        {"instruction": f"Question {i}: is the sky green? Answer true or false.", "input": "", "answer": "true"}
        for i in range(3)
    ]
    task_file = tmp_path / "boolq.json"
    task_file.write_text(json.dumps(records))
    out, _ = runtime_ir
    tasks = [f"boolq={task_file}"]
    torch_res = evaluate(
        str(sparse_dir),
        EvalConfig(tasks=tasks, max_new_tokens=6, device="cpu"),
        adapter=str(adapters[1]),
        output=tmp_path / "t.json",
    )
    genai_res = evaluate(
        str(sparse_dir),
        EvalConfig(tasks=tasks, max_new_tokens=6, runtime="genai", precision="f32"),
        adapter="task_b",
        ir=str(out),
        output=tmp_path / "g.json",
    )
    t = json.loads((tmp_path / "t.json").read_text())["samples"]["boolq"]
    g = json.loads((tmp_path / "g.json").read_text())["samples"]["boolq"]
    assert [s["response"] for s in g] == [s["response"] for s in t]
    assert genai_res["runtime"] == "genai" and genai_res["inference_precision"] == "f32"
    assert torch_res["tasks"]["boolq"]["accuracy"] == genai_res["tasks"]["boolq"]["accuracy"]


def test_generate_cli_streams_each_adapter(runtime_ir, capsys):
    out, _ = runtime_ir
    assert (
        main(
            [
                "generate",
                str(out),
                "--prompt",
                "The quick",
                "--adapter",
                "task_a",
                "--adapter",
                "none",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "== adapter: task_a" in printed.out and "== adapter: none (base)" in printed.out
    assert printed.err.count("TPOT") == 2


def test_bench_times_genai_with_a_runtime_adapter(runtime_ir, tmp_path):
    from shears_nncf.benchmarking import bench
    from shears_nncf.config import BenchConfig

    out, _ = runtime_ir
    res = bench(
        out,
        config=BenchConfig(prompt_len=8, new_tokens=6, repeats=2, runtime="genai", adapter="task_a"),
        output_json=tmp_path / "b.json",
    )
    assert res["runtime"] == "genai" and res["adapter"] == "task_a"
    assert res["tpot_ms"]["median"] > 0 and res["fc_layers"] > 0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(config=ExportConfig(quantize="none")), "--adapter-mode runtime"),  # two adapters into one IR
        (dict(config=ExportConfig(quantize="none", adapter_mode="runtime"), adapter=None), "needs --adapter"),
    ],
)
def test_export_refuses_what_cannot_be_exported(sparse_dir, adapters, tmp_path, kwargs, needle):
    from shears_nncf.errors import ShearsError

    kwargs.setdefault("adapter", list(adapters))
    with pytest.raises(ShearsError, match=needle.replace("-", r"\-")):
        export(sparse_dir, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_masked_adapter_is_refused_at_run_time(sparse_dir, tmp_path, capsys):
    masked = _adapter(tmp_path / "masked")
    mark_masked(masked)
    code = main(
        [
            "export",
            "--model",
            str(sparse_dir),
            "--adapter",
            str(masked),
            "--adapter-mode",
            "runtime",
            "--quantize",
            "none",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "sparsity-masked" in err and "--merge" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--merge", "--adapter-mode", "runtime"], "exclude each other"),
        (["--adapter-mode", "sideways"], "--adapter-mode must be one of"),
    ],
)
def test_export_cli_option_errors(sparse_dir, adapters, tmp_path, capsys, args, needle):
    code = main(
        ["export", "--model", str(sparse_dir), "--adapter", str(adapters[0]), "--output", str(tmp_path / "o")] + args
    )
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_generate_and_bench_cli_errors(runtime_ir, tmp_path, capsys):
    out, _ = runtime_ir
    assert main(["generate", str(out), "--prompt", "x", "--adapter", "nope"]) == 2
    assert "neither a PEFT adapter folder" in capsys.readouterr().err
    assert main(["bench", str(out), "--runtime", "infer", "--adapter", "task_a"]) == 2
    assert "--runtime genai" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "has no openvino_model.xml" in capsys.readouterr().err
    no_tokenizer = tmp_path / "ir"
    no_tokenizer.mkdir()
    for f in ("openvino_model.xml", "openvino_model.bin", "config.json"):
        (no_tokenizer / f).write_bytes((out / f).read_bytes())
    assert main(["generate", str(no_tokenizer), "--prompt", "x"]) == 2
    assert "openvino_tokenizer.xml" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "x", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err
