"""The OpenVINO IR as this project writes and runs it: inputs, layer inspection, and the compile options.

Two facts about OpenVINO's CPU plugin (2026.4) shape the compile options, and both are handled here, once, for
``export``, ``bench`` and ``eval --ir``:

* **Precision.** On CPUs with AMX (or AVX512-BF16) an f32 IR runs in **bf16** unless ``INFERENCE_PRECISION_HINT``
  says ``f32``; elsewhere it runs in f32. The export therefore stores the precision it was meant to run in, and
  :func:`ov_config` applies it, so "the IR" means the same numbers on every CPU.
* **The sparse-weights kernel crash.** With ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` set, a W8A8
  FullyConnected whose int8 weight is exactly 64x64 and at least as sparse as the rate segfaults at its first
  inference on AMX CPUs (``benchmarks/amx/sparse_kernel_crash.py`` reproduces it with plain OpenVINO). The export
  keeps such layers off the kernel (:func:`sparse_kernel_crashes`); :func:`ov_config` drops the rate for an IR
  that still has one; and :func:`check_first_inference` runs the first inference of a sparse IR in a child
  process, so that a crash of a kind not yet known becomes one error line instead of taking the process down.

``compile_model`` applies only a few of the IR's ``runtime_options`` by itself (in OpenVINO 2026.4: the KV-cache
precisions and the dynamic-quantization group size; not the inference precision, threads, streams or performance
hint, nor the sparse rate), so the export stores the KV-cache precision there for every loader, and the rate and the
precision there and in ``export_report.json``, where :func:`ov_config` reads them for a compile::

    OVModelForCausalLM.from_pretrained(ir_dir, ov_config=shears_nncf.ir.ov_config(ir_dir))
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import numpy as np

from .config import BenchConfig
from .errors import ShearsError, first_line
from .options import check_value
from .reports import REPORT_FILES

logger = logging.getLogger(__name__)

IR_NAME = "openvino_model.xml"
REPORT_NAME = REPORT_FILES["export"]
SPARSE_RATE_KEY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
PRECISION_KEY = "INFERENCE_PRECISION_HINT"
KV_CACHE_KEY = "KV_CACHE_PRECISION"
#: Ops that only move / rescale a weight on its way from its Constant to the MatMul.
_WEIGHT_PATH_OPS = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "FakeQuantize"}
CRASH_REPRODUCER = "benchmarks/amx/sparse_kernel_crash.py"
#: How NNCF names the Multiply that SmoothQuant puts in front of a MatMul's input.
_SMOOTH_QUANT_SUFFIX = "nncf_smooth_quant"
#: Joins the layer names of a fused LoRA A MatMul: ``model.layers.0.self_attn.q_proj+k_proj+v_proj.lora_A``.
FUSED_JOIN = "+"
#: Why a layer is kept off the sparse kernel: said in the export report, the log and ov_config's warning.
CRASH_REASON = ("64x64 int8 weight: OpenVINO's CPU sparse-weights kernel segfaults on it "
                f"(reproducer: {CRASH_REPRODUCER})")


# ---------------------------------------------------------------------------------------------- CPU


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


# ------------------------------------------------------------------------------------------- inputs


def ir_inputs(ids: np.ndarray, past: int = 0) -> dict[str, np.ndarray]:
    """The stateful IR's inputs for ``ids`` after ``past`` cached tokens (``past=0``: a prefill)."""
    n = ids.shape[1]
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, past + n), dtype=np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64)[None], "beam_idx": np.zeros(1, dtype=np.int32)}


# --------------------------------------------------------------------------------------- inspection


def module_of(matmul_name: str) -> Optional[str]:
    """``__module.model.layers.0.mlp.up_proj.base_layer/aten::linear/MatMul`` -> ``model.layers.0.mlp.up_proj.base_layer``."""
    head = matmul_name.split("/", 1)[0]
    return head.removeprefix("__module.") if head.startswith("__module.") else None


def modules_by_input(model) -> dict[str, str]:
    """Producer name of each weight MatMul's activation input -> the MatMul's module, where only one reads it.

    The CPU plugin names some FullyConnected nodes after a dequantization Multiply it fused (``Multiply_50042``),
    so their module cannot be read off the runtime name; their input keeps its IR name, and where a single
    projection reads that tensor (an o_proj, a down_proj) it names the layer. Inputs shared by several
    projections (q/k/v) are left out: those nodes keep their own names.
    """
    readers: dict[str, set[str]] = {}
    for op in model.get_ordered_ops():
        module = module_of(op.get_friendly_name())
        if op.get_type_name() != "MatMul" or module is None or _weight_constant(op) is None:
            continue
        node = op.input_value(0).get_node()
        while node.get_type_name() in ("FakeQuantize", "Convert"):
            node = node.input_value(0).get_node()
        readers.setdefault(node.get_friendly_name(), set()).add(module)
    return {name: next(iter(mods)) for name, mods in readers.items() if len(mods) == 1}


def _weight_constant(matmul) -> Optional[Any]:
    """Follow the MatMul's second input up through decompression ops to the Constant that stores the weight."""
    node = matmul.input_value(1).get_node()
    while node.get_type_name() in _WEIGHT_PATH_OPS:
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def constant_zeros(const, shape: tuple[int, int]) -> np.ndarray:
    """Boolean zero mask of a weight constant in the torch [out, in] layout (int4 is stored two per byte)."""
    et = const.get_element_type().get_type_name()
    data = const.get_data()
    if et in ("i4", "u4"):
        raw = data.reshape(-1).view(np.uint8)
        nibbles = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(-1)
        data = nibbles[: int(np.prod(shape))]
    return (data == 0).reshape(shape)


def check_zeros_preserved(layers: dict[str, dict], masks: dict[str, np.ndarray]) -> int:
    """Every weight that was zero in torch must still be exactly zero in the IR constant; returns layers checked."""
    checked = 0
    for name, packed in masks.items():
        info = layers.get(name)
        if info is None:
            raise ShearsError(f"layer {name} is missing from the exported IR; the export did not keep the model's structure")
        shape = tuple(info["shape"])
        torch_zero = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
        ir_zero = constant_zeros(info["_const"], shape)
        lost = int((torch_zero & ~ir_zero).sum())
        if lost:
            raise RuntimeError(f"{lost} pruned weights of {name} are no longer zero in the IR ({info['dtype']}); "
                               "quantization must be symmetric so that zero stays zero")
        checked += 1
    return checked


def ir_layers(model) -> dict[str, dict]:
    """Every MatMul with a constant weight, by torch module name: its dtype, shape, input precision and role."""
    layers = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        module = module_of(op.get_friendly_name())
        const = _weight_constant(op)
        if module is None or const is None:
            continue
        shape = tuple(int(d) for d in const.get_output_shape(0))
        out_in = (shape[0], int(np.prod(shape[1:]))) if len(shape) > 2 else shape
        if len(out_in) != 2:
            continue
        role = "lora_A" if ".lora_A." in module else "lora_B" if ".lora_B." in module else "base"
        # PEFT's wrapped base layer (and the outlier part of a split one, shears_nncf.outliers) under the layer's name
        name = module.split(".lora_")[0] if role != "base" else module.replace(".base_layer.", ".").removesuffix(".base_layer")
        key = name if role == "base" else f"{name}.{role}"
        int8_input = op.input_value(0).get_node().get_type_name() == "FakeQuantize"
        layers[key] = {"role": role, "dtype": const.get_element_type().get_type_name(), "shape": list(out_in),
                       "activations": "int8" if int8_input else "float", "_const": const}
        if FUSED_JOIN in name:  # one MatMul for the LoRA A's of several layers (fuse_lora_a)
            parent, leaves = name.rsplit(".", 1)
            layers[key]["members"] = [f"{parent}.{leaf}" for leaf in leaves.split(FUSED_JOIN)]
    return layers


def _weight_path_constants(matmul) -> list[Any]:
    """Every Constant on the MatMul's weight path: the weight and its scales / zero points (not shape operands)."""
    found, stack, seen = [], [matmul.input_value(1).get_node()], set()
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        kind = node.get_type_name()
        if kind == "Constant":
            found.append(node)
        elif kind in ("Reshape", "Transpose", "Convert"):
            stack.append(node.input_value(0).get_node())
        elif kind in _WEIGHT_PATH_OPS:
            stack.extend(v.get_node() for v in node.input_values())
    return found


def weight_bytes(model, sparse: Collection[str] = ()) -> dict[str, int]:
    """Bytes of weight data each constant-weight MatMul reads per call, by :func:`module_of` name.

    A decode step reads every weight once, so at the machine's read bandwidth their sum bounds the time per token
    from below (the KV cache and one embedding row per token come on top). Counted as the kernel reads it: the
    stored constants (int4 packed two per byte, int8, float) with their scales and zero points; a module in
    ``sparse`` (one the CPU plugin ran on its sparse kernel) reads its non-zero values plus one mask bit per weight.
    """
    out: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        module, weight = module_of(op.get_friendly_name()), _weight_constant(op)
        if module is None or weight is None:
            continue
        total = 0
        for const in _weight_path_constants(op):
            size = const.get_byte_size()
            if module in sparse and const.get_friendly_name() == weight.get_friendly_name():
                data = weight.get_data()
                size = int(np.count_nonzero(data)) * data.itemsize + (data.size + 7) // 8
            total += size
        out[module] = out.get(module, 0) + total
    return out


def lora_counts(layers: dict[str, dict]) -> tuple[int, int]:
    """How many layers the IR's LoRA A and LoRA B MatMuls serve (a fused A serves each of its members)."""
    a = sum(len(v.get("members", [key])) for key, v in layers.items() if v["role"] == "lora_A")
    return a, sum(1 for v in layers.values() if v["role"] == "lora_B")


# ------------------------------------------------------------------------------------- graph rewrite


def fuse_lora_a(model, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """One MatMul for the LoRA A's of layers that read the same tensor (q/k/v; gate/up), split into each layer's B.

    At decode every MatMul is a FullyConnected with a fixed cost of its own, and an unmerged adapter adds two per
    layer; the A's of layers that share an input become one ``[sum of ranks, in]`` MatMul and a VariadicSplit, which
    compute the same numbers. Runs on the traced float IR, before quantization (the fused A is then quantized
    like any LoRA MatMul, per output channel, so the int8 weights are the same). Layers in ``exclude`` (those kept
    with float inputs) stay apart, so that every ignored scope still covers whole layers. Returns
    ``{fused key (as in ir_layers): member layers}``. Opt-in (``export --fuse-lora``): on OpenVINO 2026.4's CPU plugin
    the W8A8 graph gains a Split and per-branch dequantization nodes for the FullyConnected it loses, and decode got
    no faster (benchmarks/RESULTS.md, "What the unmerged adapter costs").
    """
    from openvino import opset13 as ops

    groups: dict[tuple[str, int], list] = {}
    for op in model.get_ordered_ops():
        module = module_of(op.get_friendly_name()) if op.get_type_name() == "MatMul" else None
        if module is None or ".lora_A." not in module or module.split(".lora_")[0] in exclude:
            continue
        attrs = op.get_attributes()
        if op.input_value(1).get_node().get_type_name() != "Constant" or attrs["transpose_a"] or not attrs["transpose_b"]:
            continue
        src = op.input_value(0)
        groups.setdefault((src.get_node().get_name(), src.get_index()), []).append(op)
    fused = {}
    for members in groups.values():
        members = sorted(members, key=lambda m: m.get_friendly_name())
        layers = [module_of(m.get_friendly_name()).split(".lora_")[0] for m in members]
        parents = {layer.rsplit(".", 1)[0] for layer in layers}
        if len(members) < 2 or len(parents) != 1:
            continue
        weights = [m.input_value(1).get_node().get_data() for m in members]  # each [rank, in]
        name = f"{parents.pop()}.{FUSED_JOIN.join(layer.rsplit('.', 1)[1] for layer in layers)}"
        matmul = ops.matmul(members[0].input_value(0), ops.constant(np.concatenate(weights, axis=0)), False, True)
        matmul.set_friendly_name(f"__module.{name}.lora_A.fused/aten::linear/MatMul")
        split = ops.variadic_split(matmul, -1, [w.shape[0] for w in weights])
        split.set_friendly_name(f"__module.{name}.lora_A.fused/split")
        for i, m in enumerate(members):
            m.output(0).replace(split.output(i))
        fused[f"{name}.lora_A"] = layers
    return fused


def layer_report(layers: dict[str, dict]) -> dict[str, dict]:
    """:func:`ir_layers` with each weight's zero fraction, ready for JSON."""
    report = {}
    for key, info in layers.items():
        zeros = constant_zeros(info["_const"], tuple(info["shape"]))
        report[key] = {k: v for k, v in info.items() if k != "_const"} | {"sparsity": round(float(zeros.mean()), 4)}
    return report


def input_smoothing(model) -> dict[str, np.ndarray]:
    """The per-input-channel factor ``c`` that W8A8's SmoothQuant multiplies into each base MatMul's input, by module.

    NNCF's SmoothQuant moves activation outliers into the weights: the MatMul sees ``x * c`` (then the activation
    FakeQuantize) and holds ``W / c``. Anything that taps the MatMul's input, as OpenVINO GenAI's run-time LoRA
    does, sees ``x * c`` too, so a LoRA ``A`` must be divided by ``c`` to stay right on this IR.
    """
    out = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or _weight_constant(op) is None:
            continue
        module = module_of(op.get_friendly_name())
        if module is None or ".lora_" in module:
            continue
        node = op.input_value(0).get_node()
        while node.get_type_name() in ("FakeQuantize", "Convert"):
            node = node.input_value(0).get_node()
        if node.get_type_name() != "Multiply" or not node.get_friendly_name().endswith(_SMOOTH_QUANT_SUFFIX):
            continue
        consts = [v.get_node() for v in node.input_values() if v.get_node().get_type_name() == "Constant"]
        if len(consts) == 1:
            out[module.removesuffix(".base_layer")] = consts[0].get_data().astype(np.float32).reshape(-1)
    return out


# --------------------------------------------------------------------------------- the kernel crash


def sparse_kernel_crashes(out_features: int, in_features: int) -> bool:
    """Whether a sparse W8A8 layer of this shape crashes OpenVINO's CPU sparse kernel (2026.4, AMX).

    Bisected with plain OpenVINO (``benchmarks/amx/sparse_kernel_crash.py``): one int8 MatMul behind a
    FakeQuantize, 50% zeros, rate 0.45, segfaults for a 64x64 weight, with 1 or 2 threads, 1 or 4 tokens, 2-D or
    3-D input, signed or unsigned activations; 64x128, 128x64, 64x192, 192x64, 128x128 up to 576x1536 run the
    sparse kernel. Smaller or non-multiple-of-64 widths never take the sparse kernel. So the one shape is 64x64.
    """
    return (out_features, in_features) == (64, 64)


def crash_prone_layers(layers: dict[str, dict], rate: Optional[float]) -> list[str]:
    """The IR's base layers that the sparse kernel would take at ``rate`` and that crash it."""
    if rate is None:
        return []
    out = []
    for key, info in layers.items():
        if info["activations"] != "int8" or info["dtype"] not in ("i8", "u8") or not sparse_kernel_crashes(*info["shape"]):
            continue
        if float(constant_zeros(info["_const"], tuple(info["shape"])).mean()) >= rate:
            out.append(key)
    return out


# ------------------------------------------------------------------------------------ compile options


def _stored(model, key: str) -> Optional[str]:
    return model.get_rt_info(["runtime_options", key]).astype(str) if model.has_rt_info(["runtime_options", key]) else None


def store_runtime_options(model, rate: Optional[float], precision: str, kv_cache_precision: Optional[str] = None) -> None:
    """Write the sparse rate, the inference precision and the KV-cache precision into the IR's ``runtime_options``."""
    if kv_cache_precision is not None:  # applied by compile_model itself, in every loader
        model.set_rt_info(kv_cache_precision, ["runtime_options", KV_CACHE_KEY])
    if rate is not None:
        model.set_rt_info(str(rate), ["runtime_options", SPARSE_RATE_KEY])
    if precision != "default":
        model.set_rt_info(precision, ["runtime_options", PRECISION_KEY])


def ov_config(ir_dir: str | os.PathLike, precision: Optional[str] = None) -> dict[str, Any]:
    """The compile options for ``ir_dir``: its stored sparse rate and inference precision, for ``ov_config=``.

    ``precision`` (f32 | bf16 | default) overrides the stored one. The rate is left out, with a warning, for an
    IR that holds a layer the sparse kernel crashes on (an IR exported before the guard, or by other tools).
    """
    import openvino as ov

    check_value(BenchConfig, "precision", precision)
    xml = Path(ir_dir) / IR_NAME
    if not xml.is_file():
        raise ShearsError(f"{ir_dir} has no {IR_NAME}; pass an IR folder written by 'shears-nncf export'")
    try:
        model = ov.Core().read_model(xml)
    except RuntimeError as e:
        first = first_line(e, "unreadable")
        raise ShearsError(f"cannot read the IR {xml}: {first}; export it again") from None
    config: dict[str, Any] = {}
    rate = _stored(model, SPARSE_RATE_KEY)
    if rate is not None:
        risky = crash_prone_layers(ir_layers(model), float(rate))
        if risky:
            logger.warning("not applying the stored sparse rate %s: %d layer(s) of %s would crash OpenVINO (%s), e.g. %s; "
                           "export the model again with this version to keep them off the sparse kernel",
                           rate, len(risky), ir_dir, CRASH_REASON, risky[0])
        else:
            config[SPARSE_RATE_KEY] = float(rate)
    precision = precision or _stored(model, PRECISION_KEY) or "default"
    if precision != "default":
        config[PRECISION_KEY] = precision
    return config


def compiled_precision(compiled_model) -> str:
    """The precision a compiled model runs its float ops in (``f32``, ``bf16``, ``f16``)."""
    return compiled_model.get_property(PRECISION_KEY).get_type_name()


# ------------------------------------------------------------------------------- crash containment

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
    code = "import json, sys; from shears_nncf.ir import _probe_child; _probe_child(sys.argv[1], json.loads(sys.argv[2]))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(xml), json.dumps(props)], capture_output=True,
                              text=True, timeout=timeout_s, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise ShearsError(f"the first inference of {ir_dir} with {props} did not finish in {timeout_s:.0f} s; "
                          "check the IR, or export it with --sparse-rate 1 to keep the sparse kernel off") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise ShearsError(f"OpenVINO crashed ({name}) at the first inference of {ir_dir} with sparse rate "
                          f"{props[SPARSE_RATE_KEY]} on this CPU; export it again with --sparse-rate 1 to keep the sparse "
                          f"kernel off, and report the layer shapes upstream (see {CRASH_REPRODUCER})")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ShearsError(f"OpenVINO cannot run {ir_dir}: {lines[-1] if lines else 'exit code ' + str(proc.returncode)}; "
                          "export the IR again")
    _PROBED.add(key)
