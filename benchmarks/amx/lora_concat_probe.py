"""Probe (plain OpenVINO, no project code): can an unmerged LoRA cost fewer runtime nodes on the CPU plugin?

At decode an unmerged adapter costs OpenVINO's CPU plugin per executed node, not per byte (benchmarks/RESULTS.md,
"What the unmerged adapter costs"): each adapted layer adds a LoRA A FullyConnected, a LoRA B FullyConnected and an
Add. This builds a stack of sparse W8A8 layers (int8 weights 50% zero per row, int8 activations behind a
FakeQuantize, as ``nncf.quantize`` writes them) in three forms and times one-token inferences interleaved:

    base     y = W x                                     no adapter (the bound)
    unmerged y = W x + B (A x)                           what the export writes: 3 extra nodes per layer
    concat   y = [W | B] [x ; A x]                       B joins the base weight as extra input columns, so the
                                                         base FullyConnected computes the adapter's output too

The concat form keeps A and B apart from W (the adapter stays unmerged, W's zeros untouched), with the rank padded
to 64 so that the widened weight still suits the sparse kernel. Printed: ms per inference, node counts, the kernel
of every FullyConnected (random values: this times the graph forms, it checks no numbers)::

    python benchmarks/amx/lora_concat_probe.py --threads 2 --layers 64 --rounds 20
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np


def build(form: str, layers: int, dim: int, rank: int, shape: str = "static", seed: int = 0):
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    padded = -(-rank // 64) * 64

    def fq(node, hi):
        return ops.fake_quantize(node, np.float32(-hi), np.float32(hi), np.float32(-hi), np.float32(hi), 256)

    def int8(shape, zero_half=False):
        w = rng.integers(-127, 128, size=shape).astype(np.int8)
        if zero_half:
            w[np.arange(shape[0])[:, None], np.argsort(rng.random(shape), axis=1)[:, : shape[1] // 2]] = 0
        return w

    def dq(w, scale):
        return ops.multiply(ops.convert(ops.constant(w), np.float32), ops.constant(np.full((w.shape[0], 1), scale, np.float32)))

    x = ops.parameter({"static": [1, 1, dim], "seq": [1, -1, dim], "dynamic": [-1, -1, dim]}[shape], np.float32, name="x")
    h = x
    for _ in range(layers):
        w = int8((dim, dim), zero_half=True)
        a = int8((rank, dim))
        b = int8((dim, rank))
        xq = fq(h, 4.0)
        if form == "base":
            y = ops.matmul(xq, dq(w, 1e-3), False, True)
        elif form == "unmerged":
            low = ops.matmul(xq, dq(a, 1e-3), False, True)
            y = ops.add(ops.matmul(xq, dq(w, 1e-3), False, True), ops.matmul(fq(low, 4.0), dq(b, 1e-4), False, True))
        else:  # concat: A padded to 64 rows, B's columns beside W's, rescaled to W's step (1e-4 / 1e-3)
            a_pad = np.zeros((padded, dim), np.int8)
            a_pad[:rank] = a
            low = ops.multiply(ops.matmul(xq, dq(a_pad, 1e-3), False, True), ops.constant(np.float32(0.1)))
            wide = np.zeros((dim, dim + padded), np.int8)
            wide[:, :dim], wide[:, dim:dim + rank] = w, b
            y = ops.matmul(fq(ops.concat([h, low], -1), 4.0), dq(wide, 1e-3), False, True)
        h = y
    return ov.Model([h], [x])


def main() -> int:
    import openvino as ov

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layers", type=int, default=64)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--rank", type=int, default=24)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=16, help="inferences per round")
    p.add_argument("--shape", default="static", choices=["static", "seq", "dynamic"],
                   help="input [1, 1, dim]; [1, ?, dim]; [?, ?, dim] (batch and sequence dynamic, as in an LLM IR)")
    a = p.parse_args()
    core = ov.Core()
    props = {"INFERENCE_NUM_THREADS": a.threads, "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": 0.45,
             "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    x = np.abs(np.random.default_rng(1).standard_normal((1, 1, a.dim))).astype(np.float32)
    forms, info = {}, {}
    for form in ("base", "unmerged", "concat"):
        model = build(form, a.layers, a.dim, a.rank, a.shape)
        profiled = core.compile_model(model, "CPU", {**props, "PERF_COUNT": True}).create_infer_request()
        profiled.infer({"x": x})
        executed = [i for i in profiled.get_profiling_info() if i.status == i.Status.EXECUTED]
        info[form] = (len(executed), dict(Counter(i.exec_type for i in executed if "FullyConnected" in i.node_type)))
        forms[form] = core.compile_model(model, "CPU", props).create_infer_request()
        forms[form].infer({"x": x})
    times = {f: [] for f in forms}
    for rnd in range(a.rounds):
        for f in (list(forms) if rnd % 2 == 0 else list(forms)[::-1]):
            t = time.perf_counter()
            for _ in range(a.steps):
                forms[f].infer({"x": x})
            times[f].append((time.perf_counter() - t) / a.steps * 1e3)
    base = statistics.median(times["base"])
    print(f"OpenVINO {ov.get_version()}, {a.threads} thread(s), {a.layers} layers of {a.dim}x{a.dim} (50% zero, W8A8), "
          f"rank {a.rank}, {a.shape} input shape, {a.rounds} interleaved rounds of {a.steps} one-token inferences")
    print(f"{'form':10s} {'ms':>8s} {'vs base':>8s} {'nodes':>6s}  FullyConnected kernels")
    for f, t in times.items():
        ms = statistics.median(t)
        print(f"{f:10s} {ms:8.3f} {ms / base:8.3f} {info[f][0]:6d}  {info[f][1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
