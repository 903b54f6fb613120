"""OpenVINO's sparse-weights kernel where it can run (AMX CPUs), and the guard against the shapes it crashes on.

The AMX tests skip elsewhere: OpenVINO picks its sparse int8 kernel only on CPUs with ``amx_int8``.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from tiny_models import CALIBRATION, make_model

from shears_nncf.benchmarking import bench
from shears_nncf.cli import main
from shears_nncf.config import BenchConfig, ExportConfig
from shears_nncf.errors import ShearsError
from shears_nncf.exporting import export
from shears_nncf.ir import ir_inputs
from shears_nncf.kernel_guard import SPARSE_RATE_KEY, check_first_inference
from shears_nncf.runtime_options import ov_config

REPO = Path(__file__).resolve().parents[1]
AMX = "amx_int8" in Path("/proc/cpuinfo").read_text()
needs_amx = pytest.mark.skipif(
    not AMX,
    reason="OpenVINO's sparse int8 kernel runs only on CPUs with AMX (amx_int8); "
    "this CPU has none, so there is nothing to run or crash",
)


def prune_half(model):
    with torch.no_grad():
        for m in model.model.layers.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.scatter_(1, m.weight.abs().argsort(dim=1)[:, : m.weight.shape[1] // 2], 0.0)
    return model


def save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def runtime_kernels(compiled, request):
    """FullyConnected kernels by torch module, from OpenVINO's runtime graph (independent of the project's bench)."""
    prim = {
        op.get_friendly_name(): op.get_rt_info()["primitiveType"].astype(str)
        for op in compiled.get_runtime_model().get_ops()
    }
    return {
        i.node_name.split("/")[0].removeprefix("__module."): prim[i.node_name]
        for i in request.get_profiling_info()
        if "FullyConnected" in i.node_type and i.status == i.Status.EXECUTED
    }


def prefill_and_step_kernels(ir) -> dict[str, str]:
    """The kernels of a 4-token prefill and one decode step, one thread, with the IR's stored options."""
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(ir / "openvino_model.xml"),
        "CPU",
        {**ov_config(ir), "PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1},
    )
    request = compiled.create_infer_request()
    request.infer(ir_inputs(np.array([[5, 6, 7, 8]])))
    request.infer(ir_inputs(np.array([[9]]), past=4))
    return runtime_kernels(compiled, request)


# ---------------------------------------------------------------------------------- realistic shapes


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """Hidden 128, MLP 256, 4 heads of 32, 2 KV heads: every projection is a multiple of 64 (none 64x64)."""
    root = tmp_path_factory.mktemp("amx")
    model, tok = make_model("llama", hidden_size=128, intermediate_size=256, num_key_value_heads=2)
    sparse = save(prune_half(model), tok, root / "sparse")
    ir = root / "ir"
    export(
        sparse,
        ir,
        config=ExportConfig(quantize="w8a8", nsamples=12, seqlen=48, ignored_scopes=[]),
        calibration_texts=CALIBRATION,
    )
    return sparse, ir


@needs_amx
def test_sparse_kernel_runs_in_every_pruned_layer(realistic, tmp_path):
    sparse, ir = realistic
    report = json.loads((ir / "export_report.json").read_text())
    pruned = {n for n, s in report["torch_sparsity"].items() if s >= 0.5}
    assert len(pruned) == 14 and report["sparse_kernel_guarded_layers"] == {}
    kernels = prefill_and_step_kernels(ir)
    assert {m for m, k in kernels.items() if "sparse" in k} == pruned  # every pruned layer, nothing else (lm_head)
    # bench and the export report say the same as the runtime graph
    res = bench(
        ir, config=BenchConfig(prompt_len=8, new_tokens=4, repeats=1, threads=1), output_json=tmp_path / "b.json"
    )
    assert res["sparse_fc_layers"] == len(pruned) == report["sparse_kernel_layers"]
    assert {k["module"]: k["exec_type"] for k in res["kernels"]} == kernels


@needs_amx
def test_sparse_kernel_logits_equal_the_dense_kernel(realistic):
    """The sparse and the dense int8 kernels sum the same int8 products in int32 (exact) and apply the same f32
    dequantization, so the logits may differ only by f32 rounding of the post-ops: 1e-5 of the largest logit."""
    _, ir = realistic
    core = ov.Core()
    model = core.read_model(ir / "openvino_model.xml")
    ids = np.random.default_rng(0).integers(3, 300, size=(1, 24))
    logits = {}
    for name, props in (
        ("sparse", ov_config(ir)),
        ("dense", {k: v for k, v in ov_config(ir).items() if k != SPARSE_RATE_KEY}),
    ):
        compiled = core.compile_model(model, "CPU", {**props, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        logits[name] = request.infer(ir_inputs(ids))["logits"].copy()
        n_sparse = sum("sparse" in k for k in runtime_kernels(compiled, request).values())
        assert (n_sparse > 0) is (name == "sparse")
    assert np.abs(logits["sparse"] - logits["dense"]).max() <= 1e-5 * np.abs(logits["dense"]).max()


@needs_amx
def test_reproducer_shows_the_upstream_crash():
    """The plain-OpenVINO reproducer agrees with the guard: 64x64 crashes, every other shape runs the kernel.

    When this fails, OpenVINO changed: update ``shears_nncf.kernel_guard.sparse_kernel_crashes`` (or drop the guard).
    """
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/repro/sparse_kernel_crash.py")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CRASH SIGSEGV" in proc.stdout and "brgemm_avx512_amx_sparse" in proc.stdout


# ------------------------------------------------------------------------ an IR from before the guard


@pytest.fixture(scope="module")
def unguarded_ir(tmp_path_factory):
    """The tests' tiny Llama (hidden 64) exported W8A8 with the guard switched off, as older versions wrote it."""
    root = tmp_path_factory.mktemp("unguarded")
    model, tok = make_model("llama")
    sparse = save(prune_half(model), tok, root / "sparse")
    mp = pytest.MonkeyPatch()
    mp.setattr("shears_nncf.kernel_guard.sparse_kernel_crashes", lambda out_f, in_f: False)
    try:
        export(
            sparse,
            root / "ir",
            config=ExportConfig(quantize="w8a8", nsamples=8, seqlen=32),
            calibration_texts=CALIBRATION,
        )
    finally:
        mp.undo()
    return root / "ir"


def test_ov_config_drops_the_rate_of_an_ir_that_would_crash(unguarded_ir, caplog, tmp_path):
    report = json.loads((unguarded_ir / "export_report.json").read_text())
    assert report["sparse_kernel_guarded_layers"] == {} and report["sparse_rate"] == pytest.approx(0.45)
    with caplog.at_level(logging.WARNING, logger="shears_nncf.runtime_options"):
        options = ov_config(unguarded_ir)
    assert SPARSE_RATE_KEY not in options
    assert "would crash OpenVINO" in caplog.text and "self_attn.q_proj" in caplog.text
    # so bench (and eval --ir) run it, on any CPU, without the sparse kernel
    assert (
        main(
            [
                "bench",
                str(unguarded_ir),
                "--prompt-len",
                "4",
                "--new-tokens",
                "2",
                "--repeats",
                "1",
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "b.json").read_text())["sparse_rate"] is None


@needs_amx
def test_a_crash_in_openvino_becomes_one_error(unguarded_ir):
    """Forcing the rate onto the crashing layers: the child process dies, this process raises a ShearsError."""
    with pytest.raises(ShearsError, match=r"OpenVINO crashed \(SIGSEGV\) at the first inference .* --sparse-rate 1"):
        check_first_inference(unguarded_ir, {SPARSE_RATE_KEY: 0.45, "INFERENCE_NUM_THREADS": 1})
    check_first_inference(unguarded_ir, {"INFERENCE_NUM_THREADS": 1})  # no rate: nothing to contain, no child
