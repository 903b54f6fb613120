"""Does OpenVINO's sparse kernel still run in every pruned layer when OpenVINO GenAI adds run-time LoRA?

GenAI's ``LLMPipeline`` exposes no performance counters, so this rebuilds the graph its dynamic LoRA mode makes
(:func:`shears_nncf.genai.emulate_runtime_lora`) on the base IR with plain OpenVINO, compiles it with the IR's
stored options and ``PERF_COUNT``, and prints the kernel of every FullyConnected next to the same IR without the
branches::

    python benchmarks/amx/genai_lora_kernels.py BASE_IR ADAPTER.safetensors [--threads 2]

Exit code 0 when as many FullyConnected layers run the
sparse kernel with the branches as without them; 1 otherwise; 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def kernels(model, props: dict, feeds: dict) -> dict[str, str]:
    """The kernel of every executed FullyConnected in a decode step, by node."""
    import openvino as ov

    from shears_nncf.bench import fc_kernels
    from shears_nncf.ir import ir_inputs

    compiled = ov.Core().compile_model(model, "CPU", {**props, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({**ir_inputs(np.array([[5, 6, 7, 8]])), **feeds})
    request.infer({**ir_inputs(np.array([[9]]), past=4), **feeds})
    return {k["node"]: k["exec_type"] for k in fc_kernels(compiled, request, model)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ir", help="the base IR folder (export --adapter-mode runtime)")
    p.add_argument("adapter", help="the GenAI adapter file (IR/genai_adapters/NAME.safetensors)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import openvino as ov
    from safetensors.numpy import load_file

    from shears_nncf.bench import cpu_info
    from shears_nncf.genai import emulate_runtime_lora
    from shears_nncf.ir import IR_NAME, ov_config

    if not (Path(a.ir) / IR_NAME).is_file() or not Path(a.adapter).is_file():
        print(f"error: need an IR folder with {IR_NAME} and an adapter .safetensors file", file=sys.stderr)
        return 2
    props = {"PERFORMANCE_HINT": "LATENCY", **ov_config(a.ir), **({"INFERENCE_NUM_THREADS": a.threads} if a.threads else {})}
    plain = kernels(ov.Core().read_model(Path(a.ir) / IR_NAME), props, {})
    model = ov.Core().read_model(Path(a.ir) / IR_NAME)
    feeds = emulate_runtime_lora(model, {k: v.astype(np.float32) for k, v in load_file(a.adapter).items()})
    with_lora = kernels(model, props, feeds)
    cpu = cpu_info()
    print(f"{cpu['name']} (AMX: {', '.join(cpu['amx_flags']) or 'none'}), options {props}")
    print(f"adapted MatMuls: {len(feeds) // 3}")
    print(f"without LoRA branches: {dict(Counter(plain.values()))}")
    print(f"with GenAI's LoRA branches: {dict(Counter(with_lora.values()))}")
    # counted, not matched by name: the plugin names a fused node after one of its ops, which differs between graphs
    sparse = sum("sparse" in k.lower() for k in plain.values())
    kept = sum("sparse" in k.lower() for k in with_lora.values())
    print(f"{kept} sparse-kernel FullyConnected layers with the run-time LoRA branches, {sparse} without")
    return 0 if kept >= sparse else 1


if __name__ == "__main__":
    sys.exit(main())
