"""NNCF quantization of an exported IR, model in, model out: W8A8 for the sparse kernel, or weight-only int8 / int4.

Every mode is symmetric in its weights, so a pruned zero stays an exact zero. In W8A8 some layers keep float inputs
(:func:`float_input_layers`): each block's MLP output projection, whose input (the gated MLP activation) has outlier
channels that per-tensor int8 cannot hold even after SmoothQuant, and the output head, which is never pruned; they
get weight-only int8 (or int4, ``ExportConfig.advanced.float_input_weights``) and no sparse kernel.
"""

from __future__ import annotations

import logging
import re
from typing import Optional, Sequence

from torch import nn

from .config import ExportConfig
from .ir import head_layers, ir_layers
from .models import check_scopes, matches_scope
from .nncf_workarounds import smooth_quant_as_intended

logger = logging.getLogger(__name__)

#: Each architecture's MLP output projection (Llama/Qwen2/Mistral/Phi-3/Gemma, GPT-NeoX, OPT).
MLP_OUT_PROJECTIONS = ("down_proj", "dense_4h_to_h", "fc2")
_LORA_PATTERN = r".*\.lora_[AB]\..*"


def _float_inputs(
    linears: list[str], heads: list[str], ignored_scopes: Optional[Sequence[str]], arch: str
) -> list[str]:
    """The rule, on layer names: ``None`` = the MLP output projections and the head; else the layers the patterns
    name, each pattern matching at least one (a typo would silently quantize the layer meant to be protected)."""
    if ignored_scopes is None:
        return [n for n in linears if n.rsplit(".", 1)[-1] in MLP_OUT_PROJECTIONS or n in heads]
    check_scopes(linears, list(ignored_scopes), "export ignored_scopes", arch)
    return [n for n in linears if matches_scope(n, list(ignored_scopes))]


def float_input_modules(model: nn.Module, ignored_scopes: Optional[Sequence[str]]) -> list[str]:
    """The torch Linear modules that W8A8 leaves with float inputs (see :func:`_float_inputs`)."""
    linears = [
        n.removesuffix(".base_layer")
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and ".lora_" not in n
    ]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    heads = [n for n, m in model.named_modules() if head is not None and m is head]
    return _float_inputs(linears, heads, ignored_scopes, type(model).__name__)


def float_input_layers(ov_model, ignored_scopes: Optional[Sequence[str]]) -> list[str]:
    """The IR's base layers (by torch module name, :func:`shears_nncf.ir.ir_layers`) that W8A8 leaves with float
    inputs."""
    linears = [k for k, v in ir_layers(ov_model).items() if v["role"] == "base"]
    return _float_inputs(linears, head_layers(ov_model), ignored_scopes, "the IR")


def _scope_patterns(modules: Sequence[str]) -> list[str]:
    """NNCF ignored-scope patterns covering the IR MatMuls traced from these modules (their LoRA MatMuls included)."""
    return [re.escape(f"__module.{m}") + r"[./].*" for m in modules]


def int4_weights(ov_model, dataset=None, data_aware: bool = False):
    """OpenVINO's int4 LLM format: symmetric (zero stays zero), groups of 128, the head and embedding int8.

    The head stays int8 by NNCF's rule for the last MatMul it compresses, which after W8A8 is the last float one:
    the head only while it keeps float inputs (``ExportConfig`` allows int4 float-input layers with the default
    scopes alone). Rank-r LoRA MatMuls are too narrow for 128-wide groups and cost little: they are left as they are.
    ``data_aware`` adds NNCF's AWQ and scale estimation on ``dataset``, as ``optimum-cli --awq --scale-estimation``.
    """
    import nncf

    extra = {"awq": True, "scale_estimation": True, "dataset": dataset} if data_aware else {}
    return nncf.compress_weights(
        ov_model,
        mode=nncf.CompressWeightsMode.INT4_SYM,
        group_size=128,
        ratio=1.0,
        backup_mode=nncf.BackupMode.INT8_SYM,
        ignored_scope=nncf.IgnoredScope(patterns=[_LORA_PATTERN], validate=False),
        advanced_parameters=nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST
        ),
        **extra,
    )


def quantize(
    ov_model, dataset=None, config: Optional[ExportConfig] = None, float_inputs: Optional[Sequence[str]] = None
):
    """Quantize ``ov_model`` as ``config.quantize`` says; returns the quantized model (NNCF quantizes in place).

    ``dataset`` (an ``nncf.Dataset`` of IR inputs, :func:`shears_nncf.calibration.as_nncf_dataset`) calibrates W8A8.
    ``float_inputs`` (W8A8: torch module names kept with float inputs) defaults to :func:`float_input_layers` of
    ``config.ignored_scopes``; they get weight-only compression, as do the unmerged LoRA MatMuls' weights.
    """
    import nncf

    config = config or ExportConfig()
    if config.quantize == "int8-weights":
        return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_SYM)
    if config.quantize == "int4-weights":
        return int4_weights(ov_model)  # the LoRA MatMuls stay float
    if config.quantize != "w8a8":
        return ov_model
    if dataset is None:
        raise ValueError("W8A8 needs a calibration dataset of IR inputs")
    if float_inputs is None:
        float_inputs = float_input_layers(ov_model, config.ignored_scopes)
    patterns = _scope_patterns(float_inputs)
    scope = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
    # MIXED: symmetric int8 weights (zero stays zero), asymmetric int8 activations; TRANSFORMER adds SmoothQuant
    with smooth_quant_as_intended(scope):
        ov_model = nncf.quantize(
            ov_model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=config.nsamples,
            ignored_scope=scope,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=config.advanced.smooth_quant_alpha)
            ),
        )
    if scope is None:
        return ov_model
    if (
        config.advanced.float_input_weights == "int4"
    ):  # the W8A8 layers' weights are int8 already: the float ones are left
        ov_model = int4_weights(ov_model)
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_SYM)
