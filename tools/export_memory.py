"""Where `export`'s memory goes: peak resident memory of each of its phases, against the model's fp32 weight bytes.

A diagnostic beside docs/results.md's "Export memory" table. This runs one ``shears_nncf.exporting.export``
in this process, samples the RSS every 5 ms, and times the phases by wrapping export's own steps (load the torch
model, trace it to an IR, build the calibration set, quantize, save), so each phase's peak and its rise over the
start are printed beside the process's baseline after importing the stack::

    python tools/export_memory.py MODEL_DIR --quantize w8a8 [--adapter ADAPTER] [--nsamples N --seqlen L]
        [--json out.json] [--nncf-steps]

Each phase's end is split into anonymous memory (copies the process made) and file-backed pages (the mapped IR
weights and the libraries), which tells a copy of the weights from the weights file read through mmap.
``--nncf-steps`` also times NNCF's own steps inside ``nncf.quantize`` (graph copies, the statistics model's
compilation, statistics collection, each algorithm), to find which one holds which copy of the weights.

Run one export per process (a second would start from the first one's heap).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def resident_mib() -> tuple[float, float, float]:
    """(total, anonymous, file-backed) resident MiB of this process, from one read of /proc/self/status (Linux).

    Mapped IR weights and libraries are file-backed (the kernel can drop them); copies the process made are anonymous,
    and shared memory counts with them (it cannot be dropped without swap either).
    """
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kib = lambda key: int(fields[key].split()[0]) if key in fields else 0  # noqa: E731
    anon, file = (kib("RssAnon") + kib("RssShmem")) / 1024, kib("RssFile") / 1024
    return anon + file, anon, file


class Timeline:
    """Resident memory sampled in a thread, and named phases (start, end) to read the peaks of."""

    TOTAL, ANON, FILE = 1, 2, 3  # columns of a sample (time first)

    def __init__(self, interval_s: float = 0.005):
        self.interval = interval_s
        self.samples: list[tuple[float, float, float, float]] = []
        self.phases: list[tuple[str, float, float]] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter(), *resident_mib()))

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases.append((name, t0, time.perf_counter()))

    def peak(self, t0: float, t1: float, col: int = TOTAL) -> float:
        """The largest sample in [t0, t1]; a phase shorter than the interval gets the sample nearest to it."""
        return max((s[col] for s in self.samples if t0 <= s[0] <= t1), default=self.at(t0, col))

    def at(self, t: float, col: int = TOTAL) -> float:
        return min(self.samples, key=lambda s: abs(s[0] - t))[col] if self.samples else float("nan")


#: NNCF internals timed by --nncf-steps: (module, owner attribute or None, function, label)
NNCF_STEPS = [
    ("nncf", None, "quantize", "nncf.quantize"),
    ("nncf", None, "compress_weights", "nncf.compress_weights"),
    ("nncf.openvino.graph.model_transformer", "OVModelTransformer", "transform", "nncf: copy + transform graph"),
    ("nncf.openvino.engine", "OVNativeEngine", "__init__", "nncf: compile statistics model (f32)"),
    (
        "nncf.common.tensor_statistics.aggregator",
        "StatisticsAggregator",
        "collect_statistics",
        "nncf: collect statistics",
    ),
    ("nncf.quantization.algorithms.pipeline", None, "build_graph", "nncf: build NNCFGraph"),
    ("nncf.quantization.algorithms.pipeline", "Pipeline", "get_statistic_points_for_step", "nncf: statistic points"),
    ("nncf.quantization.algorithms.smooth_quant.algorithm", "SmoothQuant", "apply", "nncf: SmoothQuant.apply"),
    ("nncf.quantization.algorithms.min_max.algorithm", "MinMaxQuantization", "apply", "nncf: MinMax.apply"),
    (
        "nncf.quantization.algorithms.fast_bias_correction.algorithm",
        "FastBiasCorrection",
        "apply",
        "nncf: FastBiasCorrection.apply",
    ),
    (
        "nncf.quantization.algorithms.channel_alignment.algorithm",
        "ChannelAlignment",
        "apply",
        "nncf: ChannelAlignment.apply",
    ),
]


def wrap(module, name: str, timeline: Timeline, label: str) -> None:
    fn = getattr(module, name, None)
    if fn is None:  # the export's steps were renamed: time the rest, say which phase is missing
        print(
            f"export_memory: {getattr(module, '__name__', module)}.{name} not found; phase '{label}' not timed",
            file=sys.stderr,
        )
        return

    def wrapped(*args, **kwargs):
        with timeline.phase(label):
            return fn(*args, **kwargs)

    setattr(module, name, wrapped)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--adapter")
    p.add_argument("--quantize", default="w8a8", choices=["w8a8", "int8-weights", "int4-weights", "none"])
    p.add_argument("--out", default="/tmp/export_memory_ir")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--json")
    p.add_argument("--nncf-steps", action="store_true", help="also time NNCF's own steps inside nncf.quantize")
    args = p.parse_args()

    import shutil

    import openvino as ov
    from safetensors import safe_open

    import shears_nncf.exporting as ex
    from shears_nncf.config import ExportConfig

    tl = Timeline()
    tl.start()
    time.sleep(0.05)
    baseline = resident_mib()[0]
    weights = 0
    for f in Path(args.model).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                weights += math.prod(st.get_slice(k).get_shape())
    fp32_mb = weights * 4 / 2**20
    for name, label in (
        ("load_model", "load torch model"),
        ("_trace", "trace to IR (optimum-intel)"),
        ("_calibration", "calibration set"),
        ("quantize", "quantize (nncf)"),
        ("_check_ir", "check zeros"),
    ):
        wrap(ex, name, tl, label)
    wrap(ov, "save_model", tl, "ov.save_model")
    if args.nncf_steps:
        import importlib

        for module, owner, name, label in NNCF_STEPS:
            mod = importlib.import_module(module)
            wrap(getattr(mod, owner) if owner else mod, name, tl, label)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    ex.export(
        args.model,
        args.out,
        adapter=args.adapter,
        config=ExportConfig(quantize=args.quantize, nsamples=args.nsamples, seqlen=args.seqlen),
    )
    t1 = time.perf_counter()
    time.sleep(0.05)
    tl.stop()
    peak, peak_anon = tl.peak(t0, t1), tl.peak(t0, t1, tl.ANON)
    rows = [
        {
            "phase": n,
            "seconds": round(b - a, 1),
            "start_mb": round(tl.at(a)),
            "peak_mb": round(tl.peak(a, b)),
            "peak_anon_mb": round(tl.peak(a, b, tl.ANON)),
            "end_mb": round(tl.at(b)),
            "end_anon_mb": round(tl.at(b, tl.ANON)),
            "end_file_mb": round(tl.at(b, tl.FILE)),
        }
        for n, a, b in sorted(tl.phases, key=lambda x: x[1])
    ]
    # NNCF transforms the graph many times; the short steps that hold no memory would only bury the others
    rows = [
        r
        for r in rows
        if r["seconds"] >= 0.5 or r["peak_mb"] - r["start_mb"] >= 16 or not r["phase"].startswith("nncf:")
    ]
    print(
        f"model {args.model}: {weights / 1e6:.1f} M parameters, fp32 weights {fp32_mb:.0f} MiB; "
        f"export --quantize {args.quantize}"
        + (f" --adapter {args.adapter}" if args.adapter else "")
        + f" --nsamples {args.nsamples} --seqlen {args.seqlen}"
    )
    print(
        f"process after imports: {baseline:.0f} MiB; export peak {peak:.0f} MiB = {peak / fp32_mb:.2f}x fp32 weights "
        f"({(peak - baseline) / fp32_mb:.2f}x above the imports); peak anonymous {peak_anon:.0f} MiB = "
        f"{peak_anon / fp32_mb:.2f}x (the rest is file-backed: libraries and the mapped IR); {t1 - t0:.0f} s"
    )
    print(
        f"{'phase':40s} {'s':>7s} {'start MiB':>10s} {'peak MiB':>10s} {'peak anon':>10s} {'end MiB':>8s} "
        f"{'anon':>6s} {'file':>6s}"
    )
    for r in rows:
        print(
            f"{r['phase']:40s} {r['seconds']:7.1f} {r['start_mb']:10d} {r['peak_mb']:10d} {r['peak_anon_mb']:10d} "
            f"{r['end_mb']:8d} {r['end_anon_mb']:6d} {r['end_file_mb']:6d}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "quantize": args.quantize,
                    "adapter": args.adapter,
                    "params": weights,
                    "fp32_mb": fp32_mb,
                    "baseline_mb": baseline,
                    "peak_mb": peak,
                    "peak_anon_mb": peak_anon,
                    "seconds": t1 - t0,
                    "phases": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
