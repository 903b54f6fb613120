"""CPU latency of an exported IR (time to first token, time per output token, memory) and the kernel each
FullyConnected layer ran, read from OpenVINO's performance counters.

The kernel matters more than the clock: a sparse W8A8 IR only gains on a CPU where the CPU plugin picks its
sparse kernel (``exec_type`` containing ``sparse``, e.g. ``brgemm_avx512_amx_sparse_i8``), which needs AMX.
On any other CPU the same IR runs dense int8 kernels, and this module says so instead of reporting a
speed-up that cannot exist.

Timing runs, by default, through OpenVINO GenAI's ``LLMPipeline`` (its own ``PerfMetrics``: TTFT and TPOT), the
runtime OpenVINO users deploy, optionally with a run-time adapter; ``runtime="infer"`` drives the stateful IR's
infer request directly instead (prefill, then one token per step, greedy), as ``OVModelForCausalLM`` does. GenAI
exposes no performance counters, so the kernels always come from an infer-request compile of the same IR with
the same options.

Decode is bound by the bytes of weights each token reads, so the report also gives those (each layer as its kernel
reads it, :func:`shears_nncf.ir.weight_bytes`; a run-time adapter's come on top) and the rate the measured TPOT
reads them at: set beside the machine's memory bandwidth, it says how far the IR is from its bound.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import BenchConfig
from .errors import ShearsError
from .io import check_output_file, read_json, write_json
from .ir import IR_NAME, REPORT_NAME, ir_inputs, module_of, modules_by_input, weight_bytes
from .kernel_guard import SPARSE_RATE_KEY, check_first_inference, cpu_flags
from .memory import PeakRSS
from .reports import REPORT_FILES, BenchReport, BenchRun
from .runtime_options import compiled_precision, ov_config

logger = logging.getLogger(__name__)

AMX_FLAGS = ("amx_int8", "amx_bf16", "amx_tile")
#: Node types of the CPU plugin's runtime graph that carry projection weights.
_FC_TYPES = ("FullyConnected", "LLMMLP", "QKVProjection")
NO_AMX_NOTE = (
    "this CPU has no AMX (amx_int8): OpenVINO's sparse-weights kernel cannot run here, every FullyConnected "
    "runs a dense kernel whatever the sparse rate; measure sparse speed-ups on an AMX Xeon"
)


# ---------------------------------------------------------------------------------------- CPU


def cpu_info() -> dict[str, Any]:
    """CPU name, AMX flags from /proc/cpuinfo and OpenVINO's view of the CPU's capabilities."""
    import openvino as ov

    core = ov.Core()
    flags = cpu_flags()
    amx = sorted(f for f in AMX_FLAGS if f in flags)
    return {
        "name": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "optimization_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "amx_flags": amx,
        "avx512": "avx512f" in flags,
        "cores": os.cpu_count(),
        "sparse_kernel_possible": "amx_int8" in flags,
    }


# ---------------------------------------------------------------------------------------- timing


def _props(config: BenchConfig, extra: dict) -> dict[str, Any]:
    props = {"PERFORMANCE_HINT": "LATENCY", **extra}
    if config.threads:
        props["INFERENCE_NUM_THREADS"] = config.threads
    return props


def _compile(core, model, config: BenchConfig, extra: dict) -> Any:
    return core.compile_model(model, "CPU", _props(config, extra))


def greedy_generate(request, prompt: np.ndarray, new_tokens: int) -> tuple[float, list[float]]:
    """Greedy generation on the stateful request; returns the prefill time and every decode-step time."""
    request.reset_state()
    t = time.perf_counter()
    logits = request.infer(ir_inputs(prompt))["logits"]
    token = int(logits[0, -1].argmax())
    ttft = time.perf_counter() - t
    steps, n = [], prompt.shape[1]
    for i in range(new_tokens - 1):
        t = time.perf_counter()
        logits = request.infer(ir_inputs(np.array([[token]]), past=n + i))["logits"]
        token = int(logits[0, -1].argmax())
        steps.append(time.perf_counter() - t)
    return ttft, steps


def _stats(values: list[float], scale: float = 1e3) -> dict[str, float]:
    v = [x * scale for x in values]
    return {
        "median": round(statistics.median(v), 3),
        "min": round(min(v), 3),
        "max": round(max(v), 3),
        "stdev": round(statistics.stdev(v), 3) if len(v) > 1 else 0.0,
    }


# ---------------------------------------------------------------------------------------- kernels


def fc_kernels(compiled_model, request, model) -> list[dict[str, Any]]:
    """The kernel (``exec_type``) of every executed FullyConnected-like node in the last inference.

    A node the plugin renamed gets its module from its input in ``model``, the IR that was compiled
    (:func:`shears_nncf.ir.modules_by_input`), so that sparse-kernel counts and weight bytes miss no layer.
    """
    by_input = modules_by_input(model)
    runtime = {op.get_friendly_name(): op for op in compiled_model.get_runtime_model().get_ordered_ops()}
    rows = []
    for info in request.get_profiling_info():
        if info.status != info.Status.EXECUTED or not any(t in info.node_type for t in _FC_TYPES):
            continue
        module = module_of(info.node_name)
        if module is None and info.node_name in runtime:
            module = by_input.get(runtime[info.node_name].input_value(0).get_node().get_friendly_name())
        rows.append(
            {
                "node": info.node_name,
                "module": module,
                "node_type": info.node_type,
                "exec_type": info.exec_type,
                "sparse": "sparse" in info.exec_type.lower(),
                "us": round(info.real_time.total_seconds() * 1e6, 1),
            }
        )
    return rows


def _profile(core, model, config: BenchConfig, extra: dict, prompt: np.ndarray) -> tuple[list[dict[str, Any]], str]:
    """Kernels seen in a decode step and the precision, from a separate PERF_COUNT compile (never the timed one)."""
    compiled = _compile(core, model, config, {**extra, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    greedy_generate(request, prompt, 2)
    return fc_kernels(compiled, request, model), compiled_precision(compiled)


# ---------------------------------------------------------------------------------------- bench


def _time_infer(core, model, config: BenchConfig, stored: dict, prompt: np.ndarray):
    """Compile time, and per repeat TTFT, mean TPOT and total, on the IR's own infer request (seconds)."""
    t = time.perf_counter()
    compiled = _compile(core, model, config, stored)
    compile_s = time.perf_counter() - t
    request = compiled.create_infer_request()
    greedy_generate(request, prompt, min(config.new_tokens, 4))  # warm-up
    runs = [greedy_generate(request, prompt, config.new_tokens) for _ in range(config.repeats)]
    tpots = [statistics.mean(steps) if steps else ttft for ttft, steps in runs]
    return compile_s, [r[0] for r in runs], tpots, [r[0] + sum(r[1]) for r in runs]


def _time_genai(ir_dir: Path, config: BenchConfig, prompt: np.ndarray):
    """Pipeline load time, and per repeat TTFT, TPOT and total from GenAI's own PerfMetrics (seconds)."""
    from .genai import load_pipeline

    t = time.perf_counter()
    pipe = load_pipeline(ir_dir, [config.adapter] if config.adapter else [], config.precision, config.threads)
    load_s = time.perf_counter() - t
    name = next(iter(pipe.adapters), None)
    pipe.generate_ids(prompt[0], min(config.new_tokens, 4), name)  # warm-up
    runs = [pipe.generate_ids(prompt[0], config.new_tokens, name) for _ in range(config.repeats)]
    return (
        load_s,
        [r.ttft_ms / 1e3 for r in runs],
        [r.tpot_ms / 1e3 for r in runs],
        [(r.ttft_ms + r.tpot_ms * (config.new_tokens - 1)) / 1e3 for r in runs],
    )


def _bench_one(ir_dir: Path, config: BenchConfig) -> BenchRun:
    import openvino as ov

    xml = ir_dir / IR_NAME
    export_report = read_json(ir_dir / REPORT_NAME, "export report") if (ir_dir / REPORT_NAME).is_file() else {}
    hf_config = read_json(ir_dir / "config.json", "model config") if (ir_dir / "config.json").is_file() else {}
    stored = ov_config(ir_dir, config.precision)  # also turns an unreadable IR into one error line
    core = ov.Core()
    model = core.read_model(xml)
    positions = hf_config.get("max_position_embeddings")
    if positions and config.prompt_len + config.new_tokens > positions:
        raise ShearsError(
            f"--prompt-len {config.prompt_len} + --new-tokens {config.new_tokens} exceeds the model's "
            f"{positions} positions; use shorter lengths"
        )
    check_first_inference(ir_dir, _props(config, stored))  # a crash in OpenVINO becomes an error line
    vocab = int(hf_config.get("vocab_size") or model.output("logits").get_partial_shape()[-1].get_length())
    prompt = np.random.default_rng(0).integers(0, vocab, size=(1, config.prompt_len), dtype=np.int64)

    with PeakRSS() as mem:
        if config.runtime == "genai":
            compile_s, ttfts, tpots, totals = _time_genai(ir_dir, config, prompt)
        else:
            compile_s, ttfts, tpots, totals = _time_infer(core, model, config, stored, prompt)
    kernels, precision = _profile(core, model, config, stored, prompt)  # the same options as the timed runs
    weight_mb = sum(weight_bytes(model, {k["module"] for k in kernels if k["sparse"]}).values()) / 1e6
    summary: dict[str, int] = {}
    for k in kernels:
        key = f"{k['node_type']}:{k['exec_type']}"
        summary[key] = summary.get(key, 0) + 1
    return {
        "ir": str(ir_dir),
        "runtime": config.runtime,
        "adapter": config.adapter,
        "quantize": export_report.get("quantize"),
        "sparse_rate": stored.get(SPARSE_RATE_KEY),
        "inference_precision": precision,
        "ttft_ms": _stats(ttfts),
        "tpot_ms": _stats(tpots),
        "tokens_per_s": round(1.0 / statistics.median(tpots), 2),
        "end_to_end_tokens_per_s": round(config.new_tokens / statistics.median(totals), 2),
        "compile_s": round(compile_s, 3),
        "peak_rss_mb": round(mem.peak_mb, 1),
        "rss_increase_mb": round(mem.peak_mb - mem.start_mb, 1),
        "fc_layers": len(kernels),
        "sparse_fc_layers": sum(k["sparse"] for k in kernels),
        "weight_mb_per_token": round(weight_mb, 2),
        "weight_gb_per_s": round(weight_mb / (statistics.median(tpots) * 1e3), 2),
        "kernel_summary": summary,
        "kernels": kernels,
    }


def bench(
    ir_dir: str | os.PathLike,
    baseline: Optional[str | os.PathLike] = None,
    config: Optional[BenchConfig] = None,
    output_json: Optional[str | os.PathLike] = None,
) -> BenchReport:
    """Benchmark ``ir_dir`` (and ``baseline``) on this CPU; save to ``output_json`` (default IR/bench_report.json)."""
    config = config or BenchConfig()
    ir_dir = Path(ir_dir)
    if not ir_dir.is_dir():
        raise ShearsError(f"IR folder {ir_dir} does not exist; pass the --output folder of 'shears-nncf export'")
    target = Path(output_json) if output_json else ir_dir / REPORT_FILES["bench"]
    check_output_file(target, "--json")  # before any work, not after it
    cpu = cpu_info()
    logger.info("benchmarking %s on %s (AMX: %s)", ir_dir, cpu["name"], ", ".join(cpu["amx_flags"]) or "none")
    run = _bench_one(ir_dir, config)
    result = BenchReport(cpu=cpu, config=asdict(config), **run, sparse_kernel_ran=run["sparse_fc_layers"] > 0)
    if not cpu["sparse_kernel_possible"]:
        result["note"] = NO_AMX_NOTE
        logger.warning(NO_AMX_NOTE)
    elif not result["sparse_kernel_ran"] and result.get("sparse_rate") is not None:
        result["note"] = (
            "the CPU has AMX but no FullyConnected ran a sparse kernel: the sparse kernel needs W8A8 layers "
            "(int8 activations) whose both dimensions are multiples of 64 and that are at least as sparse "
            "as the rate (and the export keeps 64x64 layers off it: OpenVINO crashes on them)"
        )
    if baseline is not None:
        base = _bench_one(Path(baseline), config)
        result["baseline"] = {k: v for k, v in base.items() if k != "kernels"}
        result["speedup_tpot"] = round(base["tpot_ms"]["median"] / result["tpot_ms"]["median"], 3)
        result["speedup_ttft"] = round(base["ttft_ms"]["median"] / result["ttft_ms"]["median"], 3)
    write_json(target, result)
    return result


def format_report(result: BenchReport) -> str:
    """A plain-text table: the timings (against the baseline if any), then the kernel of every FullyConnected."""
    cpu = result["cpu"]
    lines = [
        f"CPU: {cpu['name']}  AMX: {', '.join(cpu['amx_flags']) or 'no'}  "
        f"OpenVINO capabilities: {', '.join(cpu['optimization_capabilities'])}"
    ]
    runs = [result] + ([result["baseline"]] if "baseline" in result else [])
    lines += [
        f"{'':24s}{'this IR':>22s}" + (f"{'baseline':>22s}" if len(runs) > 1 else ""),
        f"{'ir':24s}" + "".join(f"{Path(r['ir']).name[-22:]:>22s}" for r in runs),
        f"{'quantize / sparse rate':24s}"
        + "".join(f"{str(r['quantize']) + ' / ' + str(r['sparse_rate']):>22s}" for r in runs),
        f"{'inference precision':24s}" + "".join(f"{r['inference_precision']:>22s}" for r in runs),
        f"{'runtime (adapter)':24s}"
        + "".join(
            f"{r['runtime'] + (' (' + Path(r['adapter']).name + ')' if r['adapter'] else ''):>22s}" for r in runs
        ),
    ]
    for key, label in (("ttft_ms", "TTFT ms (median)"), ("tpot_ms", "TPOT ms (median)")):
        lines.append(
            f"{label:24s}"
            + "".join(f"{r[key]['median']:>12.2f} [{r[key]['min']:.1f}-{r[key]['max']:.1f}]".rjust(22) for r in runs)
        )
    for key, label in (
        ("tokens_per_s", "tokens/s (decode)"),
        ("weight_mb_per_token", "weight MB read / token"),
        ("weight_gb_per_s", "  ... GB/s at the TPOT"),
        ("peak_rss_mb", "peak RSS MB"),
        ("fc_layers", "FullyConnected layers"),
        ("sparse_fc_layers", "  ... with sparse kernel"),
    ):
        lines.append(f"{label:24s}" + "".join(f"{r[key]:>22}" for r in runs))
    if "speedup_tpot" in result:
        lines.append(
            f"speed-up vs baseline: per token {result['speedup_tpot']:.3f}x, first token {result['speedup_ttft']:.3f}x"
        )
    lines.append("")
    lines.append(f"{'FullyConnected':60s} {'node type':32s} {'kernel (exec_type)':32s} sparse")
    for k in result["kernels"]:
        lines.append(
            f"{(k['module'] or k['node'])[-60:]:60s} {k['node_type'][:32]:32s} "
            f"{k['exec_type'][:32]:32s} {'yes' if k['sparse'] else 'no'}"
        )
    lines.append(
        "kernels: "
        + ", ".join(f"{k} x{n}" for k, n in result["kernel_summary"].items())
        + (
            " (from an infer-request compile of the same IR and options: GenAI exposes no counters)"
            if result.get("runtime") == "genai"
            else ""
        )
    )
    if result.get("note"):
        lines.append(f"NOTE: {result['note']}")
    return "\n".join(lines)
