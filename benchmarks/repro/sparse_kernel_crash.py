"""Stand-alone reproducer (plain OpenVINO, no project code): the CPU sparse-weights kernel segfaults on a 64x64 weight.

One int8 MatMul behind a FakeQuantize (the W8A8 pattern that ``nncf.quantize`` writes), its weight 50% zero per row,
compiled on the CPU with ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` 0.45 and run once. On an Intel Xeon with AMX and
OpenVINO 2026.4.1, the 64x64 weight dies with SIGSEGV inside ``libopenvino_intel_cpu_plugin.so`` at the first
inference; every other shape runs ``brgemm_avx512_amx_sparse_I8``. Each case runs in its own child process, so the
crash is reported, not suffered::

    python benchmarks/repro/sparse_kernel_crash.py            # the shape table
    python benchmarks/repro/sparse_kernel_crash.py --json F   # and save it

Exit code 0 when the table matches what shears-nncf guards against (64x64 crashes, the rest run the sparse kernel),
1 when it does not: then OpenVINO changed, and the guard (``shears_nncf.ir.sparse_kernel_crashes``) should follow.
On CPUs without AMX the sparse kernel never runs, so nothing crashes and the script says so (exit code 0).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys

SHAPES = [(64, 64), (64, 128), (128, 64), (128, 128), (64, 192), (192, 64), (256, 256)]  # (out, in)


def child(out_f: int, in_f: int, tokens: int, threads: int) -> None:
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([-1, -1, in_f], np.float32, name="x")
    q = ops.fake_quantize(x, np.float32(0), np.float32(4), np.float32(0), np.float32(4), 256)  # u8 activations
    w = rng.integers(-127, 128, size=(out_f, in_f)).astype(np.int8)
    w[np.arange(out_f)[:, None], np.argsort(rng.random((out_f, in_f)), axis=1)[:, : in_f // 2]] = 0  # 50% per row
    weight = ops.multiply(ops.convert(ops.constant(w), np.float32), ops.constant(np.full((out_f, 1), 0.01, np.float32)))
    model = ov.Model([ops.matmul(q, weight, False, True)], [x])
    props = {"INFERENCE_NUM_THREADS": threads, "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": 0.45, "PERF_COUNT": True}
    request = ov.Core().compile_model(model, "CPU", props).create_infer_request()
    request.infer({"x": np.abs(rng.standard_normal((1, tokens, in_f))).astype(np.float32)})
    kernels = [i.exec_type for i in request.get_profiling_info() if "FullyConnected" in i.node_type]
    print(json.dumps({"kernel": kernels[0] if kernels else None, "openvino": ov.get_version()}))


def run_case(out_f: int, in_f: int, tokens: int = 1, threads: int = 1) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(out_f), str(in_f), str(tokens), str(threads)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    row = {"shape": [out_f, in_f], "tokens": tokens, "threads": threads, "returncode": proc.returncode}
    if proc.returncode < 0:
        row["crash"] = signal.Signals(-proc.returncode).name
    elif proc.returncode == 0:
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    else:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", help="save the table here")
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return 0
    with open("/proc/cpuinfo") as f:
        amx = "amx_int8" in f.read()
    rows = [run_case(o, i, t, th) for o, i in SHAPES for t, th in ((1, 1), (4, 2))]
    print(f"AMX: {amx}")
    print(f"{'weight (out x in)':18s} {'tokens':>6s} {'threads':>7s}  result")
    for r in rows:
        print(
            f"{r['shape'][0]:>5d} x {r['shape'][1]:<10d} {r['tokens']:>6d} {r['threads']:>7d}  "
            f"{r.get('crash') and 'CRASH ' + r['crash'] or r.get('kernel') or r.get('error')}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"amx": amx, "rows": rows}, f, indent=1)
    if not amx:
        print("no AMX on this CPU: the sparse kernel cannot run here, so the crash cannot happen")
        return 0
    expected = all(("crash" in r) == (tuple(r["shape"]) == (64, 64)) for r in rows) and all(
        "sparse" in (r.get("kernel") or "") for r in rows if "crash" not in r
    )
    print("as guarded (64x64 crashes, every other shape runs the sparse kernel):", expected)
    return 0 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
