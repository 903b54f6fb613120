"""Where a decode step's time goes, node by node: OpenVINO's performance counters summed over decode steps.

For each ``LABEL=IR_DIR[@PRECISION]`` the IR is compiled once with its stored options (``shears_nncf.ir.ov_config``)
plus ``PERF_COUNT``, a prompt is prefilled, and the counters of every following decode step are summed. Nodes fall
into classes: the base projections (sparse kernel or dense), the LoRA MatMuls, the LoRA glue (scaling and the add
onto the base output), attention, and the rest by node type. Printed: microseconds per decode step per class, and
the 15 costliest single nodes, and how many nodes of each class run per step, so that "what the adapter costs"
is read off the runtime, not guessed. ``PERF_COUNT`` itself slows every node (on a 2-core AMX Xeon about 3x per
step), so the microseconds rank the classes; the node counts are exact::

    python tools/decode_profile.py base=/tmp/s_rt deliverable=run/openvino_ir --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from shears_nncf.benchmarking import greedy_generate
from shears_nncf.ir import IR_NAME, ir_inputs, module_of
from shears_nncf.runtime_options import ov_config

_FC = ("FullyConnected", "LLMMLP", "QKVProjection")


def node_class(info) -> str:
    """The class a runtime node's time is booked to."""
    module = module_of(info.node_name) or ""
    kind = info.node_type
    if ".lora_A" in module or ".lora_B" in module:
        return "LoRA MatMul" if any(t in kind for t in _FC) else f"LoRA {kind}"
    if any(t in kind for t in _FC):
        return "base FC, sparse kernel" if "sparse" in info.exec_type.lower() else f"base FC, {info.exec_type}"
    if ("aten::mul" in info.node_name or "aten::add" in info.node_name) and any(
        p in module for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    ):
        return f"LoRA glue ({kind})"
    if "ScaledDotProductAttention" in kind or "PagedAttention" in kind:
        return "attention"
    return kind


def profile(core, ir: str, precision, threads, prompt: np.ndarray, steps: int) -> tuple[dict, dict, dict, float]:
    """Microseconds per decode step per class and per node, executed nodes per step per class, wall ms per step."""
    props = {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True, **ov_config(ir, precision), **threads}
    compiled = core.compile_model(core.read_model(Path(ir) / IR_NAME), "CPU", props)
    request = compiled.create_infer_request()
    greedy_generate(request, prompt, 2)  # warm-up
    request.reset_state()
    logits = request.infer(ir_inputs(prompt))["logits"]
    token, n = int(logits[0, -1].argmax()), prompt.shape[1]
    classes, nodes, counts, wall = defaultdict(float), defaultdict(float), defaultdict(float), 0.0
    for i in range(steps):
        t = time.perf_counter()
        logits = request.infer(ir_inputs(np.array([[token]]), past=n + i))["logits"]
        wall += time.perf_counter() - t
        token = int(logits[0, -1].argmax())
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            us = info.real_time.total_seconds() * 1e6
            classes[node_class(info)] += us / steps
            counts[node_class(info)] += 1 / steps
            nodes[f"{info.node_name} [{info.node_type}/{info.exec_type}]"] += us / steps
    return dict(classes), dict(nodes), dict(counts), wall / steps * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="LABEL=IR_DIR or LABEL=IR_DIR@PRECISION")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--steps", type=int, default=32, help="decode steps whose counters are summed")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--json")
    a = p.parse_args(argv)
    import openvino as ov

    core = ov.Core()
    threads = {"INFERENCE_NUM_THREADS": a.threads} if a.threads else {}
    out = {}
    for spec in a.variants:
        label, _, target = spec.partition("=")
        ir, _, precision = target.partition("@")
        vocab = core.read_model(Path(ir) / IR_NAME).output("logits").get_partial_shape()[-1].get_length()
        prompt = np.random.default_rng(0).integers(3, vocab, size=(1, a.prompt_len), dtype=np.int64)
        classes, nodes, counts, wall = profile(core, ir, precision or None, threads, prompt, a.steps)
        total = sum(classes.values())
        print(
            f"\n{label} ({ir}): {wall:.2f} ms per decode step (wall, profiled), counters sum {total / 1e3:.2f} ms, "
            f"{sum(counts.values()):.0f} nodes executed per step"
        )
        for name, us in sorted(classes.items(), key=lambda kv: -kv[1]):
            print(f"  {us:9.1f} us  {100 * us / total:5.1f}%  {counts[name]:5.0f} nodes  {name}")
        print("  costliest nodes:")
        for name, us in sorted(nodes.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"  {us:9.1f} us  {name}")
        out[label] = {
            "ir": ir,
            "wall_ms": round(wall, 3),
            "classes_us": {k: round(v, 1) for k, v in classes.items()},
            "nodes_per_step": {k: round(v, 1) for k, v in counts.items()},
            "nodes_us": {k: round(v, 1) for k, v in nodes.items()},
        }
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
