"""The OpenVINO IR as this project writes it, read-only: its inputs, its weight MatMuls and the zero check.

Stage 4 traces through optimum-intel, so every weight MatMul is named after its torch module
(``__module.model.layers.0.mlp.up_proj.base_layer/aten::linear/MatMul``); :func:`ir_layers` maps the IR back to
the torch layers, and :func:`check_zeros_preserved` proves that every pruned zero is still an exact zero in the
quantized constants. Compile options live in :mod:`shears_nncf.runtime_options`, the sparse-kernel crash rule in
:mod:`shears_nncf.kernel_guard`.
"""

from __future__ import annotations

from typing import Any, Collection, Optional

import numpy as np

from .errors import ShearsError
from .reports import REPORT_FILES

IR_NAME = "openvino_model.xml"
REPORT_NAME = REPORT_FILES["export"]
#: Ops that only move / rescale a weight on its way from its Constant to the MatMul.
_WEIGHT_PATH_OPS = {"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "FakeQuantize"}
#: How NNCF names the Multiply that SmoothQuant puts in front of a MatMul's input.
_SMOOTH_QUANT_SUFFIX = "nncf_smooth_quant"


# ------------------------------------------------------------------------------------------- inputs


def ir_inputs(ids: np.ndarray, past: int = 0) -> dict[str, np.ndarray]:
    """The stateful IR's inputs for ``ids`` after ``past`` cached tokens (``past=0``: a prefill)."""
    n = ids.shape[1]
    return {
        "input_ids": ids.astype(np.int64),
        "attention_mask": np.ones((1, past + n), dtype=np.int64),
        "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }


# --------------------------------------------------------------------------------------- inspection


def module_of(matmul_name: str) -> Optional[str]:
    """``__module.model.layers.0.mlp.up_proj.base_layer/aten::linear/MatMul`` ->
    ``model.layers.0.mlp.up_proj.base_layer``."""
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
            raise ShearsError(
                f"layer {name} is missing from the exported IR; the export did not keep the model's structure"
            )
        shape = tuple(info["shape"])
        torch_zero = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
        ir_zero = constant_zeros(info["_const"], shape)
        lost = int((torch_zero & ~ir_zero).sum())
        if lost:
            raise RuntimeError(
                f"{lost} pruned weights of {name} are no longer zero in the IR ({info['dtype']}); "
                "quantization must be symmetric so that zero stays zero"
            )
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
        # PEFT's wrapped base layer under the layer's name
        name = (
            module.split(".lora_")[0]
            if role != "base"
            else module.replace(".base_layer.", ".").removesuffix(".base_layer")
        )
        key = name if role == "base" else f"{name}.{role}"
        int8_input = op.input_value(0).get_node().get_type_name() == "FakeQuantize"
        layers[key] = {
            "role": role,
            "dtype": const.get_element_type().get_type_name(),
            "shape": list(out_in),
            "activations": "int8" if int8_input else "float",
            "_const": const,
        }
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


def head_layers(model) -> list[str]:
    """The module of the MatMul that produces the IR's logits (the output head), found by walking up from them."""
    nodes = [out.get_node() for out in model.outputs if "logits" in out.get_names()]
    while nodes:
        node = nodes.pop()
        if node.get_type_name() == "MatMul" and module_of(node.get_friendly_name()):
            return [module_of(node.get_friendly_name())]
        nodes.extend(v.get_node() for v in node.input_values())
    return []


def decode_weight_bytes(model, rate: Optional[float]) -> dict[str, int]:
    """Weight bytes one decoded token reads, hardware-independent: this IR with the layers OpenVINO's sparse kernel
    takes on an AMX CPU (W8A8, int8, at least ``rate`` zeros) read sparse, and its base layers in OpenVINO's dense
    int8 and int4 weight-only formats (f16 scales per row / per group of 128, the output head int8)."""
    sparse, dense = set(), {"int8 weight-only": 0, "int4 weight-only": 0}
    heads = {h.removesuffix(".base_layer") for h in head_layers(model)}
    for op in model.get_ordered_ops():
        module, weight = (
            module_of(op.get_friendly_name()),
            _weight_constant(op) if op.get_type_name() == "MatMul" else None,
        )
        if module is None or weight is None or ".lora_" in module:
            continue
        shape = tuple(int(d) for d in weight.get_output_shape(0))
        out_f, in_f = shape[0], int(np.prod(shape[1:]))
        int8_input = op.input_value(0).get_node().get_type_name() == "FakeQuantize"
        if rate is not None and int8_input and weight.get_element_type().get_type_name() in ("i8", "u8"):
            if float(constant_zeros(weight, (out_f, in_f)).mean()) >= rate:
                sparse.add(module)
        int8 = out_f * in_f + 2 * out_f
        dense["int8 weight-only"] += int8
        head = module.removesuffix(".base_layer") in heads
        dense["int4 weight-only"] += int8 if head else out_f * in_f // 2 + 2 * out_f * -(-in_f // 128)
    return {"this IR": sum(weight_bytes(model, sparse).values()), **dense}


def lora_counts(layers: dict[str, dict]) -> tuple[int, int]:
    """How many LoRA A and LoRA B MatMuls the IR holds."""
    return tuple(sum(1 for v in layers.values() if v["role"] == role) for role in ("lora_A", "lora_B"))


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
