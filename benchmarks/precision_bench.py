"""Decode speed of one IR in each OpenVINO inference precision (f32 vs bf16, the AMX default), timed interleaved.

Every variant is compiled once with the IR's stored options (``shears_nncf.ir.ov_config``, so the sparse rate is
applied) and only the precision changed; then the variants take turns, one greedy generation each per round, the
order reversed every other round, so that machine noise falls on all of them alike. Prints the median time per
output token (TPOT) and to first token (TTFT), and the kernels the FullyConnected layers ran in each::

    python benchmarks/precision_bench.py shears_run/openvino_ir --threads 2 --rounds 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from shears_nncf.bench import _generate, cpu_info, fc_kernels
from shears_nncf.ir import IR_NAME, compiled_precision, ov_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ir", help="an IR folder written by 'shears-nncf export'")
    p.add_argument("--precisions", default="f32,bf16")
    p.add_argument("--threads", type=int, default=None, help="INFERENCE_NUM_THREADS (default: OpenVINO's, all cores)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--json", help="save the figures here")
    a = p.parse_args(argv)
    import openvino as ov

    core = ov.Core()
    model = core.read_model(Path(a.ir) / IR_NAME)
    vocab = model.output("logits").get_partial_shape()[-1].get_length()
    prompt = np.random.default_rng(0).integers(3, vocab, size=(1, a.prompt_len), dtype=np.int64)
    threads = {"INFERENCE_NUM_THREADS": a.threads} if a.threads else {}
    requests, kernels, ran = {}, {}, {}
    for prec in a.precisions.split(","):
        props = {"PERFORMANCE_HINT": "LATENCY", **ov_config(a.ir, prec), **threads}
        compiled = core.compile_model(model, "CPU", props)
        ran[prec] = compiled_precision(compiled)
        requests[prec] = compiled.create_infer_request()
        profiled = core.compile_model(model, "CPU", {**props, "PERF_COUNT": True})
        request = profiled.create_infer_request()
        _generate(request, prompt, 2)
        kernels[prec] = dict(Counter(k["exec_type"] for k in fc_kernels(profiled, request)))
        _generate(requests[prec], prompt, 4)  # warm-up
    times = {k: {"ttft": [], "tpot": []} for k in requests}
    for rnd in range(a.rounds):
        for prec in (list(requests) if rnd % 2 == 0 else list(requests)[::-1]):
            ttft, steps = _generate(requests[prec], prompt, a.new_tokens)
            times[prec]["ttft"].append(ttft * 1e3)
            times[prec]["tpot"].append(statistics.mean(steps) * 1e3)
    cpu = cpu_info()
    print(f"{a.ir} on {cpu['name']} (AMX: {', '.join(cpu['amx_flags']) or 'none'}), threads {a.threads or 'all'}, "
          f"{a.rounds} interleaved rounds of {a.prompt_len} + {a.new_tokens} tokens")
    print(f"{'precision':10s} {'ran':>5s} {'TPOT ms':>8s} {'TTFT ms':>8s}  kernels")
    out = {}
    for prec, t in times.items():
        tpot, ttft = statistics.median(t["tpot"]), statistics.median(t["ttft"])
        print(f"{prec:10s} {ran[prec]:>5s} {tpot:8.2f} {ttft:8.2f}  {kernels[prec]}")
        out[prec] = {"ran": ran[prec], "tpot_ms": tpot, "ttft_ms": ttft, "kernels": kernels[prec], "raw": t}
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "args": vars(a), "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
