"""Stage 4: OpenVINO IR of a sparse model with its LoRA adapter kept UNMERGED, quantized for the CPU.

Merging a LoRA adapter into a sparse weight fills the pruned zeros (``W + BA`` is dense), so the adapter is
exported as its own pair of small MatMuls beside the sparse base MatMul. The base weights are then quantized
W8A8 (int8 weights *and* int8 activations, symmetric weights): OpenVINO's CPU plugin only packs sparse
weights and runs its sparse kernel for such layers, on CPUs with AMX, where a layer's zero fraction is at
least ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``.

The sparse rate and the inference precision the IR is meant to run in are stored in the IR (see
:mod:`shears_nncf.ir`, whose :func:`~shears_nncf.ir.ov_config` applies them). Layers that OpenVINO's sparse
kernel crashes on keep float inputs (weight-only), so no compile with the stored rate can reach them.
"""
from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from peft.utils import CONFIG_NAME
from torch import nn

from .adapters import check_adapter_matches, is_masked, load_adapter, merge_masked
from .calibration import default_calibration_source, describe_source
from .config import ExportConfig
from .errors import ShearsError, first_line
from .io import atomic_output_dir, read_json, write_json
from .ir import (
    CRASH_REASON,
    IR_NAME,
    REPORT_NAME,
    check_zeros_preserved,
    fuse_lora_a,
    ir_inputs,
    ir_layers,
    layer_report,
    lora_counts,
    sparse_kernel_crashes,
    store_runtime_options,
)
from .models import check_positions, check_scopes, load_model, load_tokenizer, matches_scope, model_skeleton, prunable_linears
from .reports import ExportReport

logger = logging.getLogger(__name__)

TASK = "text-generation-with-past"
#: A layer counts as pruned when at least this fraction of its weights is zero (dense random weights have ~0).
PRUNED_MIN_SPARSITY = 0.1
#: 'auto' sparse rate = the smallest pruned-layer sparsity minus this margin (int8 rounding only adds zeros).
AUTO_RATE_MARGIN = 0.05
#: Each architecture's MLP output projection (Llama/Qwen2/Mistral/Phi-3/Gemma, GPT-NeoX, OPT). Its input, the gated
#: MLP activation, has outlier channels that per-tensor int8 cannot hold even after SmoothQuant; with the output
#: head it causes most of W8A8's departure from the float model (benchmarks/RESULTS.md), so by default both keep
#: float inputs (``outlier_channels`` > 0 puts all but their outlier channels on W8A8 instead). The head is never
#: pruned, so no sparse kernel is lost there.
MLP_OUT_PROJECTIONS = ("down_proj", "dense_4h_to_h", "fc2")
_LORA_PATTERN = r".*\.lora_[AB]\..*"
_QUANT_DTYPES = {"w8a8": "int8 weights + int8 activations", "int8-weights": "int8 weights, float activations",
                 "int4-weights": "int4 weights, float activations", "none": "float32"}
_FLOAT_INPUT_DTYPES = {"int8": "int8 weights", "int4": "int4 weights (the output head int8)"}

# ------------------------------------------------------------------------------------------ inputs


def resolve_sparse_rate(sparse_rate: Union[str, float], layer_sparsities: Iterable[float]) -> Optional[float]:
    """The sparse-weights decompression rate to compile with, from the zero fraction of each prunable layer.

    'auto' is a bit below the least sparse *pruned* layer, so that every pruned layer qualifies (layers left
    dense, e.g. ignored scopes, do not count); None for a dense model, which keeps OpenVINO's sparse path off.
    """
    pruned = [s for s in layer_sparsities if s >= PRUNED_MIN_SPARSITY]
    if sparse_rate != "auto":
        rate = float(sparse_rate)
        if pruned and rate > min(pruned):
            logger.warning("sparse rate %.2f is above the least sparse pruned layer (%.3f): those layers stay dense",
                           rate, min(pruned))
        return rate
    if not pruned:
        return None
    return float(np.clip(round(min(pruned) - AUTO_RATE_MARGIN, 2), 0.0, 1.0))


def float_input_modules(model: nn.Module, ignored_scopes: Optional[Sequence[str]]) -> list[str]:
    """The Linear modules that W8A8 leaves with float inputs (weight-only int8 or int4), by torch module name.

    ``None`` picks each block's MLP output projection and the output head; a pattern that matches no Linear is an error, since a typo
    would otherwise silently quantize the layer the user meant to protect.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n]
    linears = [n.removesuffix(".base_layer") for n in linears]
    if ignored_scopes is None:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        heads = [n for n, m in model.named_modules() if head is not None and m is head]
        return [n for n in linears if n.rsplit(".", 1)[-1] in MLP_OUT_PROJECTIONS or n in heads]
    check_scopes(linears, list(ignored_scopes), "export ignored_scopes", type(model).__name__)
    return [n for n in linears if matches_scope(n, list(ignored_scopes))]


def crash_guard(shapes: dict[str, tuple[int, int]], sparsity: dict[str, float], rate: Optional[float],
                float_inputs: Sequence[str]) -> dict[str, str]:
    """The W8A8 layers that the sparse kernel would take at ``rate`` and crash on, with the reason.

    They keep float inputs (weight-only, every zero kept) so that no compile with the stored rate puts them on
    the kernel; all other pruned layers keep it. See :func:`shears_nncf.ir.sparse_kernel_crashes`.
    """
    if rate is None:
        return {}
    guarded = {n: CRASH_REASON for n, shape in shapes.items()
               if n not in float_inputs and sparsity.get(n, 0.0) >= rate and sparse_kernel_crashes(*shape)}
    if guarded:
        logger.warning("%d layer(s) kept off OpenVINO's sparse kernel (%s): %s", len(guarded), CRASH_REASON,
                       ", ".join(guarded))
    return guarded


def _scope_patterns(modules: Sequence[str]) -> list[str]:
    """NNCF ignored-scope patterns covering the IR MatMuls traced from these modules (their LoRA MatMuls included)."""
    import re

    return [re.escape(f"__module.{m}") + r"[./].*" for m in modules]


# --------------------------------------------------------------------------------- torch -> IR


def _zeros(linear: nn.Linear) -> np.ndarray:
    return (linear.weight.detach() == 0).cpu().numpy()


def _torch_sparsity(model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Zero fraction and packed zero mask of every decoder-block projection (the layers stage 1 prunes)."""
    sparsity, masks = {}, {}
    for name, lin in prunable_linears(model).items():
        zero = _zeros(lin)
        sparsity[name] = float(zero.mean())
        masks[name] = np.packbits(zero, axis=None)
    return sparsity, masks


def _split_masks(model: nn.Module, split: dict[str, dict]) -> dict[str, np.ndarray]:
    """The packed zero masks of the split layers' two parts, under the names the IR's layers get."""
    masks = {}
    for name, info in split.items():
        main = model.get_submodule(info["module"].removesuffix(".outliers"))
        masks[name] = np.packbits(_zeros(main), axis=None)
        masks[f"{name}.outliers"] = np.packbits(_zeros(main.outliers), axis=None)
    return masks


def _split_outliers(model: nn.Module, tokenizer, layers: Sequence[str], config: ExportConfig, texts) -> dict[str, dict]:
    """Split each of ``layers`` (MLP output projections) around its outlier input channels; see :mod:`.outliers`.

    Returns, for each split layer, the traced module of its outlier part (which keeps float inputs) and the
    channels. Layers too narrow for ``config.outlier_channels`` stay whole (the caller keeps their inputs float).
    """
    from .calibration import calibration_windows
    from .outliers import input_absmax, split_outlier_channels, splittable

    modules = dict(model.named_modules())
    # PEFT wraps an adapted Linear: the base MatMul is its base_layer, and the adapter's MatMuls keep the whole input
    traced = {n: f"{n}.base_layer" if f"{n}.base_layer" in modules else n for n in layers}
    traced = {n: t for n, t in traced.items() if splittable(modules[t], config.outlier_channels)}
    if not traced:
        return {}
    source = texts if texts is not None else config.calibration
    windows = calibration_windows(tokenizer, source, config.nsamples, config.seqlen, config.seed)
    stats = input_absmax(model, list(traced.values()), windows)
    channels = split_outlier_channels(model, stats, config.outlier_channels)
    logger.info("%d MLP output projections W8A8 but for their %d largest input channels", len(traced), config.outlier_channels)
    return {n: {"module": f"{t}.outliers", "channels": channels[t]} for n, t in traced.items()}


def _export_ir(model: nn.Module, tokenizer, out: Path, trust_remote_code: bool) -> bool:
    """Trace through optimum-intel (stateful KV cache, fp32 weights); returns whether the tokenizer converted."""
    from optimum.exporters.openvino import export_from_model
    from optimum.exporters.openvino.convert import export_tokenizer
    from optimum.intel.openvino.configuration import OVConfig

    arch = type(model).__name__
    try:
        with warnings.catch_warnings():  # the tracer's notes on transformers' code are for their developers
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            export_from_model(model, out, task=TASK, ov_config=OVConfig(dtype="fp32"), stateful=True,
                              preprocessors=[tokenizer], trust_remote_code=trust_remote_code)
    except Exception as e:  # the exporter raises many types for unsupported models; show its first line
        first = first_line(e)
        raise ShearsError(f"OpenVINO cannot export {arch} for {TASK}: {first}; use a model architecture optimum-intel supports") from None
    try:
        export_tokenizer(tokenizer, out, task=TASK)
    except Exception as e:  # openvino-tokenizers does not cover every tokenizer; the IR works without it
        logger.info("tokenizer not converted to OpenVINO (%s); the IR still loads with the Hugging Face tokenizer", e)
    return (out / "openvino_tokenizer.xml").is_file()


# ------------------------------------------------------------------------------------ quantize


def _calibration(tokenizer, config: ExportConfig, texts: Optional[Sequence[str]]):
    """W8A8 calibration: stage 1's token windows (same source format as Wanda's), one prefill each."""
    from .calibration import as_nncf_dataset

    source = texts if texts is not None else config.calibration
    return as_nncf_dataset(tokenizer, source, config.nsamples, config.seqlen, config.seed,
                           transform_fn=lambda ids: ir_inputs(ids.numpy()))


@contextmanager
def smooth_quant_as_intended(ignored_scope=None) -> Iterator[bool]:
    """NNCF 3.4's SmoothQuant, for the block, in float32 and within ``ignored_scope``, as NNCF means it to run.

    Two departures of NNCF's own (benchmarks/RESULTS.md "Export memory"): (1) its numpy ``quantile`` returns float64
    and SmoothQuant clips its scales with it, so every rescaled weight is computed and held in float64 and then
    converted to a new float32 constant, three copies of the smoothed weights at once and the peak of a W8A8 export
    (+9.5 GiB, to a 15.1 GiB peak, on a 1.17B Llama); NNCF fixed the same chain in AWQ by casting to float32 (openvinotoolkit/nncf#3044).
    (2) SmoothQuant is built without the ignored scope (openvinotoolkit/nncf#4172), so it also rescales the layers
    that keep float inputs, moving their activation outliers into weights that then get int8 weight-only per-row
    scales. Here its scales take the activations' dtype and the ignored nodes are left out. Yields whether it applied
    (False where NNCF's SmoothQuant no longer has these methods: it then runs as NNCF ships it).
    """
    from nncf.quantization.algorithms.smooth_quant.algorithm import SmoothQuant
    from nncf.scopes import get_ignored_node_names_from_ignored_scope

    scales_fn = SmoothQuant.__dict__.get("_calculate_scale_and_ratio")
    nodes_fn = SmoothQuant.__dict__.get("_get_nodes_to_smooth_data")
    if not isinstance(scales_fn, staticmethod) or not callable(nodes_fn):
        logger.debug("NNCF's SmoothQuant has other internals: it runs as NNCF ships it")
        yield False
        return

    def in_activation_dtype(activations, *args, **kwargs):
        scales, ratio = scales_fn.__func__(activations, *args, **kwargs)
        return scales.astype(activations.dtype), ratio

    def outside_ignored_scope(self, graph, *args, **kwargs):
        nodes = nodes_fn(self, graph, *args, **kwargs)
        if ignored_scope is None:
            return nodes
        ignored = get_ignored_node_names_from_ignored_scope(ignored_scope, graph, strict=False)
        return [item for item in nodes if item[0].node_name not in ignored]

    SmoothQuant._calculate_scale_and_ratio = staticmethod(in_activation_dtype)
    SmoothQuant._get_nodes_to_smooth_data = outside_ignored_scope
    try:
        yield True
    finally:
        SmoothQuant._calculate_scale_and_ratio = scales_fn
        SmoothQuant._get_nodes_to_smooth_data = nodes_fn


def _int4_weights(model):
    """OpenVINO's int4 LLM format: symmetric (zero stays zero), groups of 128, the head and embedding int8.

    The head stays int8 by NNCF's rule for the last MatMul it compresses, which after W8A8 is the last float one:
    the head only while it keeps float inputs (``ExportConfig`` allows int4 float-input layers with the default
    scopes alone). Rank-r LoRA MatMuls are too narrow for 128-wide groups and cost little: they are left as they are.
    """
    import nncf

    return nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=128, ratio=1.0, backup_mode=nncf.BackupMode.INT8_SYM,
        ignored_scope=nncf.IgnoredScope(patterns=[_LORA_PATTERN], validate=False),
        advanced_parameters=nncf.AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST),
    )


def quantize_ir(model, mode: str, dataset=None, subset_size: int = 64, float_inputs: Sequence[str] = (),
                overflow_fix: str = "first_layer_only", smooth_quant_alpha: float = 0.95, adapter_quantize: str = "w8a8",
                float_input_weights: str = "int8"):
    """W8A8 with ``nncf.quantize`` or weight-only int8/int4 with ``nncf.compress_weights``; weights symmetric.

    In W8A8 the ``float_inputs`` modules are left out of activation quantization and then get weight-only
    compression (``float_input_weights``: int8, or int4 as :func:`_int4_weights`), so every pruned zero stays zero.
    ``adapter_quantize`` (W8A8 only) says what the unmerged LoRA MatMuls get: ``w8a8`` as their layer,
    ``int8-weights`` float inputs and int8 weights, ``none`` float weights and inputs.
    """
    import nncf

    if mode == "w8a8":
        patterns = _scope_patterns(float_inputs) + ([_LORA_PATTERN] if adapter_quantize != "w8a8" else [])
        scope = nncf.IgnoredScope(patterns=patterns, validate=False) if patterns else None
        # MIXED: symmetric int8 weights (zero stays zero), asymmetric int8 activations; TRANSFORMER adds SmoothQuant
        with smooth_quant_as_intended(scope):
            model = nncf.quantize(
                model, dataset, model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                subset_size=subset_size, ignored_scope=scope,
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    overflow_fix=nncf.OverflowFix(overflow_fix),
                    smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)),
            )
        if scope is None:
            return model
        if float_input_weights == "int4":  # the W8A8 layers' weights are int8 already: only the float ones are left
            model = _int4_weights(model)
        keep_float = nncf.IgnoredScope(patterns=[_LORA_PATTERN], validate=False) if adapter_quantize == "none" else None
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=keep_float)
    if mode == "int8-weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    if mode == "int4-weights":
        return _int4_weights(model)  # the LoRA MatMuls stay float
    return model


# ------------------------------------------------------------------------------------- public


def _torch_side(model: str, adapter: Optional[str], trust_remote_code: bool, merge: bool):
    """The model to trace (LoRA injected unmerged, or a masked LoRA merged), its tokenizer, and its stage-1 zeros."""
    torch_model = load_model(model, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    sparsity, masks = _torch_sparsity(torch_model)
    if adapter is not None:
        peft_model = load_adapter(torch_model, adapter).eval()
        # the LoRA-injected model itself: the exporter cannot trace the PeftModel wrapper
        torch_model = merge_masked(peft_model)[0] if merge else peft_model.base_model.model
    return torch_model, tokenizer, sparsity, masks


def _check_merge(adapter: Optional[str], merge: bool) -> None:
    """A masked adapter is right only merged (the IR's LoRA MatMuls would apply it unmasked); a plain one only unmerged."""
    if merge and adapter is None:
        raise ShearsError("export --merge needs --adapter: the sparsity-masked sub-adapter to merge")
    if adapter is None:
        return
    if merge and not is_masked(adapter):
        raise ShearsError(f"adapter {adapter} was not trained sparsity-masked: merging it would fill the pruned zeros; "
                          "export it unmerged (drop --merge), or train with --sparse-adapter")
    if not merge and is_masked(adapter):
        raise ShearsError(f"adapter {adapter} was trained sparsity-masked, and unmerged LoRA MatMuls would apply its "
                          "update unmasked; export it with --merge")


def _quantize_in_place(xml: Path, config: ExportConfig, dataset, masks: dict[str, np.ndarray], n_adapted: int,
                       rate: Optional[float], float_inputs: Sequence[str]):
    """Quantize the IR, check the zeros survived and the adapters stayed apart, store the sparse rate."""
    import openvino as ov

    ir = ov.Core().read_model(xml)
    if config.fuse_lora and n_adapted:  # layers with float inputs keep their own A: an ignored scope covers whole layers
        fuse_lora_a(ir, exclude=set(float_inputs))
    ir = quantize_ir(ir, config.quantize, dataset, config.nsamples, float_inputs, config.overflow_fix, config.smooth_quant_alpha,
                     config.adapter_quantize, config.float_input_weights)
    layers = ir_layers(ir)
    checked = check_zeros_preserved(layers, masks)
    report = layer_report(layers)
    served = lora_counts(layers)
    if served != (n_adapted, n_adapted):
        raise RuntimeError(f"the IR's LoRA MatMuls serve {served} (A, B) of {n_adapted} adapted layers; "
                           "the adapter was not kept unmerged")
    store_runtime_options(ir, rate, config.inference_precision, config.kv_cache_precision)
    staged = xml.with_name("openvino_model.tmp.xml")
    ov.save_model(ir, staged, compress_to_fp16=False)
    del ir, layers
    os.replace(staged, xml)
    os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))
    return report, checked


def _adapter_list(adapter, config: ExportConfig) -> list[str]:
    """The adapter folders to export: one in the IR, or any number as run-time adapter files (distinct names)."""
    adapters = [] if adapter is None else [os.fspath(a) for a in ([adapter] if isinstance(adapter, (str, os.PathLike)) else adapter)]
    if config.adapter_mode == "in-ir" and len(adapters) > 1:
        raise ShearsError(f"{len(adapters)} adapters given: an IR holds one adapter in its MatMuls; export several with "
                          "--adapter-mode runtime (one base IR, one file per adapter)")
    if config.adapter_mode == "runtime" and not adapters:
        raise ShearsError("--adapter-mode runtime needs --adapter: the sub-adapter(s) to write as run-time adapter files")
    names = [Path(a).name for a in adapters]
    if len(set(names)) != len(names):
        raise ShearsError(f"two adapters share the folder name {next(n for n in names if names.count(n) > 1)!r}, which names "
                          "its run-time file; rename one folder")
    return adapters


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    adapter: Optional[str | os.PathLike | Sequence[str | os.PathLike]] = None,
    config: Optional[ExportConfig] = None,
    trust_remote_code: bool = False,
    calibration_texts: Optional[Sequence[str]] = None,
) -> ExportReport:
    """Export ``model`` (+ an unmerged LoRA ``adapter``) to an OpenVINO IR folder in ``output``.

    With ``config.adapter_mode == "runtime"`` the IR is the base model alone and each of the ``adapter`` folders
    (one or several) becomes a file in ``output/genai_adapters/`` that OpenVINO GenAI applies at run time, written
    for this base IR (see :func:`shears_nncf.genai.write_genai_adapter`). ``calibration_texts`` (in-memory documents) replace
    ``config.calibration`` as the W8A8 calibration source. Returns the report also written to
    ``output/export_report.json``.
    """
    from .genai import GENAI_ADAPTER_DIR, adapter_scalings, write_genai_adapter

    config = config or ExportConfig()
    model = os.fspath(model)
    adapters = _adapter_list(adapter, config)
    runtime = config.adapter_mode == "runtime"
    adapter = None if runtime else (adapters[0] if adapters else None)  # the one traced into the IR
    t0 = time.perf_counter()
    skeleton = model_skeleton(model, trust_remote_code)  # before any loading: bad input fails at once
    all_ranks = {a: check_adapter_matches(skeleton, a) for a in adapters}
    ranks = all_ranks.get(adapter, {})  # in-IR: its ranks
    for a in adapters if runtime else ():
        adapter_scalings(a, model, trust_remote_code)  # refuses what GenAI cannot apply, before any work
    adapter_cfg = read_json(Path(adapter) / CONFIG_NAME, "adapter config") if adapter else {}
    _check_merge(adapter, config.merge)
    unmerged = {} if config.merge else ranks
    float_inputs = float_input_modules(skeleton, config.ignored_scopes) if config.quantize == "w8a8" else []
    if config.quantize == "w8a8":
        check_positions(skeleton, config.seqlen, "--seqlen")
    shapes = {n: (m.out_features, m.in_features) for n, m in prunable_linears(skeleton).items()}
    del skeleton
    with atomic_output_dir(output) as tmp:
        torch_model, tokenizer, torch_sparsity, masks = _torch_side(model, adapter, trust_remote_code, config.merge)
        dataset = _calibration(tokenizer, config, calibration_texts) if config.quantize == "w8a8" else None
        split = {}
        if config.quantize == "w8a8" and config.outlier_channels and config.ignored_scopes is None:
            # a run-time adapter taps its base MatMul's input, which the split narrows: the layers they adapt stay whole
            taken = set().union(*map(set, all_ranks.values())) if runtime else set()
            split = _split_outliers(torch_model, tokenizer, [n for n in float_inputs if n in shapes and n not in taken],
                                    config, calibration_texts)
            masks.update(_split_masks(torch_model, split))
            shapes.update({n: (shapes[n][0], shapes[n][1] - config.outlier_channels) for n in split})
            # their outlier parts and their adapters' MatMuls (which see every channel) keep float inputs
            float_inputs = ([n for n in float_inputs if n not in split] + [v["module"] for v in split.values()]
                            + [f"{n}.lora_{ab}" for n in split if n in unmerged for ab in "AB"])
        t_load = time.perf_counter()
        with torch.no_grad():
            has_ov_tokenizer = _export_ir(torch_model, tokenizer, tmp, trust_remote_code)
        del torch_model
        gc.collect()  # the LoRA-injected model sits in a reference cycle: without this its weights stay through quantization
        t_export = time.perf_counter()
        # pruned layers and the rate come from the stage-1 zeros: int8 rounding adds zeros even to a dense model
        rate = resolve_sparse_rate(config.sparse_rate, torch_sparsity.values())
        guarded = crash_guard(shapes, torch_sparsity, rate, float_inputs) if config.quantize == "w8a8" else {}
        float_inputs = float_inputs + list(guarded)
        layers, checked = _quantize_in_place(tmp / IR_NAME, config, dataset, masks, len(unmerged), rate, float_inputs)
        genai = {Path(a).name: write_genai_adapter(a, tmp, tmp / GENAI_ADAPTER_DIR / f"{Path(a).name}.safetensors",
                                                   trust_remote_code) for a in adapters} if runtime else {}
        t_quant = time.perf_counter()

        pruned = [v for v in torch_sparsity.values() if v >= PRUNED_MIN_SPARSITY]
        lora_matmuls = sum(1 for v in layers.values() if v["role"] != "base")
        report = {
            "model": model,
            "adapter": adapter,
            "quantize": config.quantize,
            "precision": _QUANT_DTYPES[config.quantize] + (f" (float inputs, {_FLOAT_INPUT_DTYPES[config.float_input_weights]}: "
                                                           f"{len(float_inputs)} ignored-scope Linears)" if float_inputs else ""),
            "sparse_kernel_eligible": config.quantize == "w8a8",
            # pruned base layers that W8A8 covers: the only ones OpenVINO's sparse kernel can take
            "sparse_kernel_layers": sum(1 for k, v in layers.items() if k in masks and v["activations"] == "int8"
                                        and torch_sparsity.get(k, 0.0) >= PRUNED_MIN_SPARSITY),
            "float_input_layers": float_inputs,
            # MLP output projections W8A8 but for their outlier input channels: the module of that part, the channels
            "outlier_split_layers": split,
            "outlier_channels": config.outlier_channels if split else 0,
            # pruned layers kept off the sparse kernel because OpenVINO crashes on them, with the reason
            "sparse_kernel_guarded_layers": guarded,
            "inference_precision": config.inference_precision,
            "kv_cache_precision": config.kv_cache_precision,
            "sparse_rate": rate,
            "sparse_rate_setting": config.sparse_rate,
            "min_pruned_sparsity": round(min(pruned), 4) if pruned else None,
            "mean_pruned_sparsity": round(float(np.mean(pruned)), 4) if pruned else 0.0,
            "pruned_layers": len(pruned),
            "zeros_preserved": True,
            "zeros_checked_layers": checked,
            "adapter_mode": config.adapter_mode,
            "adapters_unmerged": bool(unmerged),
            # run-time adapters: the files OpenVINO GenAI applies beside the base MatMuls, and how to load each
            "genai_adapters": genai,
            # a sparsity-masked adapter merged into the sparse weights: every stage-1 zero checked again after W8A8
            "adapter_merged": config.merge,
            "lora_matmuls": lora_matmuls,
            # one LoRA A MatMul for the layers that share an input: fused layer key -> its layers
            "fused_lora_A": {k: v["members"] for k, v in layers.items() if "members" in v},
            "adapter_ranks": ranks,
            "adapter_config": {k: adapter_cfg.get(k) for k in ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern")}
            if adapter_cfg else None,
            "openvino_tokenizer": has_ov_tokenizer,
            "calibration": None if dataset is None else {
                "source": describe_source(calibration_texts if calibration_texts is not None
                                          else config.calibration or default_calibration_source()),
                "nsamples": config.nsamples, "seqlen": config.seqlen},
            "config": asdict(config),
            "timing_s": {"load": round(t_load - t0, 2), "export": round(t_export - t_load, 2),
                         "quantize_and_check": round(t_quant - t_export, 2), "total": round(t_quant - t0, 2)},
            "torch_sparsity": {k: round(v, 4) for k, v in torch_sparsity.items()},
            "layers": layers,
            "versions": _versions(),
        }
        write_json(tmp / REPORT_NAME, report)
    if config.quantize != "w8a8" and rate is not None:
        logger.warning("%s keeps activations in float: OpenVINO's sparse kernel needs W8A8, so the sparse rate has no effect",
                       config.quantize)
    logger.info("exported %s -> %s (%s, sparse rate %s, %d LoRA MatMuls) in %.1fs", model, output, config.quantize,
                rate, lora_matmuls, report["timing_s"]["total"])
    return report


def format_report(report: ExportReport, output: str | os.PathLike) -> str:
    """What the IR in ``output`` is and how each run-time adapter is used, for the command line."""
    from .genai import GENAI_ADAPTER_DIR

    lines = [f"{report['precision']}, sparse rate {report['sparse_rate']}, {report['pruned_layers']} pruned layers "
             f"(min sparsity {report['min_pruned_sparsity']}, {report['sparse_kernel_layers']} of them W8A8), "
             f"{report['lora_matmuls']} unmerged LoRA MatMuls, {len(report['sparse_kernel_guarded_layers'])} layers kept off "
             f"the sparse kernel, inference precision {report['inference_precision']}, "
             f"{report['timing_s']['total']:.1f} s -> {output}"]
    lines += [f"run-time adapter {name}: {output}/{GENAI_ADAPTER_DIR}/{info['file']} ({info['layers']} layers; "
              f"shears-nncf generate {output} --adapter {name})" for name, info in report["genai_adapters"].items()]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import nncf
    import openvino as ov
    from optimum.intel.version import __version__ as optimum_intel

    return {"openvino": ov.get_version(), "nncf": nncf.__version__, "optimum_intel": optimum_intel}
