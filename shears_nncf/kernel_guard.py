"""The sparse-weights kernel crash of OpenVINO's CPU plugin (2026.4) and how this package keeps it away.

With ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` set, a W8A8 FullyConnected whose int8 weight is exactly 64x64 and
at least as sparse as the rate segfaults at its first inference on AMX CPUs (the repository's
``benchmarks/repro/sparse_kernel_crash.py`` reproduces it with plain OpenVINO). Three defences, each written once:
the export keeps such layers off the kernel (:func:`sparse_kernel_crashes`, :func:`crash_guard`);
:func:`shears_nncf.runtime_options.ov_config` drops the rate for an IR that still has one
(:func:`crash_prone_layers`); and :func:`check_first_inference` runs the first inference of a sparse IR in a child
process, so that a crash of a kind not yet known becomes one error line instead of taking the process down.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .errors import ShearsError
from .ir import IR_NAME, constant_zeros, ir_inputs

logger = logging.getLogger(__name__)

SPARSE_RATE_KEY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
#: Why a layer is kept off the sparse kernel: said in the export report, the log and ov_config's warning.
CRASH_REASON = "64x64 int8 weight: OpenVINO's CPU sparse-weights kernel segfaults on it"


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def sparse_kernel_possible() -> bool:
    """OpenVINO's sparse int8 kernel needs AMX (4th-gen Xeon and later)."""
    return "amx_int8" in cpu_flags()


def sparse_kernel_crashes(out_features: int, in_features: int) -> bool:
    """Whether a sparse W8A8 layer of this shape crashes OpenVINO's CPU sparse kernel (2026.4, AMX).

    Bisected with plain OpenVINO: one int8 MatMul behind a FakeQuantize, 50% zeros, rate 0.45, segfaults for a
    64x64 weight, with 1 or 2 threads, 1 or 4 tokens, 2-D or 3-D input, signed or unsigned activations; 64x128,
    128x64, 64x192, 192x64, 128x128 up to 576x1536 run the sparse kernel. Smaller or non-multiple-of-64 widths never
    take the sparse kernel. So the one shape is 64x64.
    """
    return (out_features, in_features) == (64, 64)


def crash_guard(
    shapes: dict[str, tuple[int, int]], sparsity: dict[str, float], rate: Optional[float], float_inputs: Sequence[str]
) -> dict[str, str]:
    """The W8A8 layers that the sparse kernel would take at ``rate`` and crash on, with the reason.

    They keep float inputs (weight-only, every zero kept) so that no compile with the stored rate puts them on
    the kernel; all other pruned layers keep it.
    """
    if rate is None:
        return {}
    guarded = {
        n: CRASH_REASON
        for n, shape in shapes.items()
        if n not in float_inputs and sparsity.get(n, 0.0) >= rate and sparse_kernel_crashes(*shape)
    }
    if guarded:
        logger.warning(
            "%d layer(s) kept off OpenVINO's sparse kernel (%s): %s", len(guarded), CRASH_REASON, ", ".join(guarded)
        )
    return guarded


def crash_prone_layers(layers: dict[str, dict], rate: Optional[float]) -> list[str]:
    """The IR's base layers (:func:`shears_nncf.ir.ir_layers`) that the sparse kernel would take at ``rate`` and
    that crash it."""
    if rate is None:
        return []
    out = []
    for key, info in layers.items():
        if (
            info["activations"] != "int8"
            or info["dtype"] not in ("i8", "u8")
            or not sparse_kernel_crashes(*info["shape"])
        ):
            continue
        if float(constant_zeros(info["_const"], tuple(info["shape"])).mean()) >= rate:
            out.append(key)
    return out


_PROBED: set[tuple] = set()


def _probe_child(xml: str, props: dict) -> None:
    """Compile ``xml`` with ``props`` and run a prefill and one decode step (run in the child process)."""
    import openvino as ov

    request = ov.Core().compile_model(xml, "CPU", props).create_infer_request()
    request.infer(ir_inputs(np.array([[5, 6, 7, 8]])))
    request.infer(ir_inputs(np.array([[9]]), past=4))


def check_first_inference(ir_dir: str | os.PathLike, props: dict[str, Any], timeout_s: float = 1800) -> None:
    """Run the IR's first inference with ``props`` in a child process when the sparse kernel can run.

    OpenVINO's sparse kernel has crashed the whole process on shapes the guard did not yet know; this turns
    such a crash into one :class:`ShearsError`. Only compiles that set a sparse rate on an AMX CPU are probed,
    each IR and option set once per process.
    """
    if props.get(SPARSE_RATE_KEY) is None or not sparse_kernel_possible():
        return
    xml = Path(ir_dir) / IR_NAME
    key = (str(xml.resolve()), xml.stat().st_mtime_ns, json.dumps(props, sort_keys=True))
    if key in _PROBED:
        return
    code = (
        "import json, sys; from shears_nncf.kernel_guard import _probe_child; "
        "_probe_child(sys.argv[1], json.loads(sys.argv[2]))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(xml), json.dumps(props)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except subprocess.TimeoutExpired:
        raise ShearsError(
            f"the first inference of {ir_dir} with {props} did not finish in {timeout_s:.0f} s; "
            "check the IR, or export it with --sparse-rate 1 to keep the sparse kernel off"
        ) from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ShearsError(
            f"OpenVINO crashed ({name}) at the first inference of {ir_dir} with sparse rate "
            f"{props[SPARSE_RATE_KEY]} on this CPU; export it again with --sparse-rate 1 to keep the sparse "
            "kernel off, and report the layer shapes to OpenVINO"
        )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ShearsError(
            f"OpenVINO cannot run {ir_dir}: {lines[-1] if lines else 'exit code ' + str(proc.returncode)}; "
            "export the IR again"
        )
    _PROBED.add(key)
