"""Stage 4: OpenVINO IR of a sparse model with its LoRA adapter kept UNMERGED, quantized for the CPU.

Merging a LoRA adapter into a sparse weight fills the pruned zeros (``W + BA`` is dense), so the adapter is
exported as its own pair of small MatMuls beside the sparse base MatMul (or, ``adapter_mode="runtime"``, as a file
OpenVINO GenAI applies at run time; or, for a sparsity-masked adapter, merged without filling a zero). The base
weights are then quantized W8A8 (:mod:`shears_nncf.quantization`): OpenVINO's CPU plugin only runs its sparse kernel
for such layers, on CPUs with AMX, where a layer's zero fraction is at least ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE``.

In memory: :func:`to_openvino` (torch model -> ``ov.Model``) then :func:`shears_nncf.quantization.quantize`.
:func:`export` is the folder layer over them: the checks, every pruned zero checked in the IR, the runtime options
stored in the IR and beside it, the report and the model card.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .adapters import check_adapter_matches, check_masked, is_masked, load_adapter, merge_masked
from .config import ExportConfig
from .elastic import check_sub_adapter
from .errors import ShearsError, first_line
from .export_report import PRUNED_MIN_SPARSITY, build_report, format_report  # noqa: F401  (format_report: the CLI's)
from .io import atomic_output_dir, write_json
from .ir import IR_NAME, REPORT_NAME, check_zeros_preserved, decode_weight_bytes, ir_layers, layer_report, lora_counts
from .kernel_guard import crash_guard
from .models import check_positions, load_model, load_tokenizer, model_skeleton, prunable_linears
from .quantization import float_input_modules, quantize
from .reports import ExportReport
from .runtime_options import options_of, store_runtime_options, write_option_files

logger = logging.getLogger(__name__)

TASK = "text-generation-with-past"
#: 'auto' sparse rate = the smallest pruned-layer sparsity minus this margin (int8 rounding only adds zeros).
AUTO_RATE_MARGIN = 0.05


def resolve_sparse_rate(sparse_rate: Union[str, float], layer_sparsities: Iterable[float]) -> Optional[float]:
    """The sparse-weights decompression rate to compile with, from the zero fraction of each prunable layer.

    'auto' is a bit below the least sparse *pruned* layer, so that every pruned layer qualifies (layers left
    dense, e.g. ignored scopes, do not count); None for a dense model, which keeps OpenVINO's sparse path off.
    """
    pruned = [s for s in layer_sparsities if s >= PRUNED_MIN_SPARSITY]
    if sparse_rate != "auto":
        rate = float(sparse_rate)
        if pruned and rate > min(pruned):
            logger.warning(
                "sparse rate %.2f is above the least sparse pruned layer (%.3f): those layers stay dense",
                rate,
                min(pruned),
            )
        return rate
    if not pruned:
        return None
    return float(np.clip(round(min(pruned) - AUTO_RATE_MARGIN, 2), 0.0, 1.0))


# ------------------------------------------------------------------------------------------ in memory


def _trace(model: nn.Module, tokenizer, out: Path, trust_remote_code: bool = False) -> bool:
    """Trace through optimum-intel into ``out`` (stateful KV cache, fp32 weights); returns whether the tokenizer
    converted to OpenVINO too."""
    from optimum.exporters.openvino import export_from_model
    from optimum.exporters.openvino.convert import export_tokenizer
    from optimum.intel.openvino.configuration import OVConfig

    arch = type(model).__name__
    try:
        with (
            warnings.catch_warnings(),
            torch.no_grad(),
        ):  # the tracer's notes on transformers' code are for their developers
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            export_from_model(
                model,
                out,
                task=TASK,
                ov_config=OVConfig(dtype="fp32"),
                stateful=True,
                preprocessors=[tokenizer],
                trust_remote_code=trust_remote_code,
            )
    except Exception as e:  # the exporter raises many types for unsupported models; show its first line
        raise ShearsError(
            f"OpenVINO cannot export {arch} for {TASK}: {first_line(e)}; "
            "use a model architecture optimum-intel supports"
        ) from None
    try:
        export_tokenizer(tokenizer, out, task=TASK)
    except Exception as e:  # openvino-tokenizers does not cover every tokenizer; the IR works without it
        logger.info("tokenizer not converted to OpenVINO (%s); the IR still loads with the Hugging Face tokenizer", e)
    return (out / "openvino_tokenizer.xml").is_file()


def with_adapter(model: nn.Module, adapter: Optional[str | os.PathLike], merge: bool = False) -> nn.Module:
    """``model`` with the adapter folder injected as unmerged LoRA modules, or (``merge``) a sparsity-masked adapter
    merged into its weights: the module the exporter traces (it cannot trace the PeftModel wrapper)."""
    if adapter is None:
        return model
    peft_model = load_adapter(model, adapter).eval()
    return merge_masked(peft_model)[0] if merge else peft_model.base_model.model


def to_openvino(
    model: nn.Module, tokenizer, config: Optional[ExportConfig] = None, adapter: Optional[str | os.PathLike] = None
):
    """The float OpenVINO model of ``model`` (+ ``adapter``, unmerged, or merged with ``config.merge``), not yet
    quantized: pass it to :func:`shears_nncf.quantization.quantize`. ``config.adapter_mode == "runtime"`` traces the
    base alone (GenAI applies the adapter at run time). As PEFT does, the adapter is injected into ``model`` in
    place."""
    import openvino as ov

    config = config or ExportConfig()
    if adapter is not None:
        check_sub_adapter(adapter)
        _check_merge(adapter, config.merge)
    traced = with_adapter(model, None if config.adapter_mode == "runtime" else adapter, config.merge)
    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # weights read into memory: the scratch folder goes away
    with tempfile.TemporaryDirectory(prefix="shears-trace-") as tmp:
        _trace(traced, tokenizer, Path(tmp))
        return core.read_model(Path(tmp) / IR_NAME)


# --------------------------------------------------------------------------------------------- checks


def _check_merge(adapter: Optional[str], merge: bool) -> None:
    """A masked adapter is right only merged (the IR's LoRA MatMuls would apply it unmasked); a plain one only
    unmerged."""
    if merge and adapter is None:
        raise ShearsError("export --merge needs --adapter: the sparsity-masked sub-adapter to merge")
    if adapter is None:
        return
    if merge:
        check_masked(adapter)  # the marker must have been written for these very weights
    if not merge and is_masked(adapter):
        raise ShearsError(
            f"adapter {adapter} was trained sparsity-masked, and unmerged LoRA MatMuls would apply its "
            "update unmasked; export it with --merge"
        )


def _adapter_list(adapter, config: ExportConfig) -> list[str]:
    """The adapter folders to export: one in the IR, or any number as run-time adapter files (distinct names)."""
    if adapter is None:
        adapters = []
    else:
        adapters = [os.fspath(a) for a in ([adapter] if isinstance(adapter, (str, os.PathLike)) else adapter)]
    if config.adapter_mode == "in-ir" and len(adapters) > 1:
        raise ShearsError(
            f"{len(adapters)} adapters given: an IR holds one adapter in its MatMuls; export several with "
            "--adapter-mode runtime (one base IR, one file per adapter)"
        )
    if config.adapter_mode == "runtime" and not adapters:
        raise ShearsError(
            "--adapter-mode runtime needs --adapter: the sub-adapter(s) to write as run-time adapter files"
        )
    names = [Path(a).name for a in adapters]
    if len(set(names)) != len(names):
        raise ShearsError(
            f"two adapters share the folder name {next(n for n in names if names.count(n) > 1)!r}, which "
            "names its run-time file; rename one folder"
        )
    return adapters


@dataclass
class _Plan:
    """What an export will do, settled from the inputs before any weight is loaded (bad input fails at once)."""

    model: str
    adapters: list[str]
    traced_adapter: Optional[str]  # the adapter inside the IR (in-ir mode)
    ranks: dict[str, int]  # of the traced adapter
    float_inputs: list[str]
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)


def _plan(model: str, adapters: list[str], config: ExportConfig, trust_remote_code: bool) -> _Plan:
    from .genai import adapter_scalings

    runtime = config.adapter_mode == "runtime"
    traced = None if runtime else (adapters[0] if adapters else None)
    skeleton = model_skeleton(model, trust_remote_code)
    for a in adapters:
        check_sub_adapter(a)
    ranks = {a: check_adapter_matches(skeleton, a) for a in adapters}
    for a in adapters if runtime else ():
        adapter_scalings(a, model, trust_remote_code)  # refuses what GenAI cannot apply, before any work
    _check_merge(traced, config.merge)
    float_inputs = float_input_modules(skeleton, config.ignored_scopes) if config.quantize == "w8a8" else []
    if config.quantize == "w8a8":
        check_positions(skeleton, config.seqlen, "--seqlen")
    shapes = {n: (m.out_features, m.in_features) for n, m in prunable_linears(skeleton).items()}
    return _Plan(model, adapters, traced, ranks.get(traced, {}), float_inputs, shapes)


def _torch_zeros(model: nn.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Zero fraction and packed zero mask of every decoder-block projection (the layers stage 1 prunes)."""
    sparsity, masks = {}, {}
    for name, lin in prunable_linears(model).items():
        zero = (lin.weight.detach() == 0).cpu().numpy()
        sparsity[name] = float(zero.mean())
        masks[name] = np.packbits(zero, axis=None)
    return sparsity, masks


def _calibration(tokenizer, config: ExportConfig, texts: Optional[Sequence[str]]):
    """W8A8 calibration: stage 1's token windows (same source format as Wanda's), one prefill each."""
    from .calibration import as_nncf_dataset
    from .ir import ir_inputs

    source = texts if texts is not None else config.calibration
    return as_nncf_dataset(
        tokenizer, source, config.nsamples, config.seqlen, config.seed, transform_fn=lambda ids: ir_inputs(ids.numpy())
    )


def _check_ir(ir, masks: dict[str, np.ndarray], n_unmerged: int) -> tuple[dict[str, dict], int]:
    """Every stage-1 zero is still zero in the quantized IR, and the adapter stayed apart; returns the layers."""
    layers = ir_layers(ir)
    checked = check_zeros_preserved(layers, masks)
    if lora_counts(layers) != (n_unmerged, n_unmerged):
        raise RuntimeError(
            f"the IR's LoRA MatMuls {lora_counts(layers)} (A, B) do not serve the {n_unmerged} adapted "
            "layers; the adapter was not kept unmerged"
        )
    return layer_report(layers), checked


def _save_ir(ir, xml: Path) -> None:
    """Replace the traced IR by ``ir`` (staged first: its weights may still be read from the traced file)."""
    import openvino as ov

    staged = xml.with_name("openvino_model.tmp.xml")
    ov.save_model(ir, staged, compress_to_fp16=False)
    os.replace(staged, xml)
    os.replace(staged.with_suffix(".bin"), xml.with_suffix(".bin"))


# ---------------------------------------------------------------------------------------------- folder


def export(
    model: str | os.PathLike,
    output: str | os.PathLike,
    adapter: Optional[str | os.PathLike | Sequence[str | os.PathLike]] = None,
    config: Optional[ExportConfig] = None,
    trust_remote_code: bool = False,
    calibration_texts: Optional[Sequence[str]] = None,
) -> ExportReport:
    """Export the model folder ``model`` (+ an unmerged LoRA ``adapter``) to an OpenVINO IR folder ``output``.

    With ``config.adapter_mode == "runtime"`` the IR is the base model alone and each of the ``adapter`` folders
    (one or several) becomes a file in ``output/genai_adapters/`` that OpenVINO GenAI applies at run time, written
    for this base IR (see :func:`shears_nncf.genai.write_genai_adapter`). ``calibration_texts`` (in-memory documents)
    replace ``config.calibration`` as the W8A8 calibration source. Returns the report also written to
    ``output/export_report.json``; ``output/ov_config.json`` holds the options to compile the IR with.
    """
    import openvino as ov

    config, t0 = config or ExportConfig(), time.perf_counter()
    plan = _plan(os.fspath(model), _adapter_list(adapter, config), config, trust_remote_code)
    with atomic_output_dir(output) as tmp:
        torch_model, tokenizer = (
            load_model(plan.model, trust_remote_code=trust_remote_code),
            load_tokenizer(plan.model, trust_remote_code=trust_remote_code),
        )
        sparsity, masks = _torch_zeros(torch_model)  # int8 rounding adds zeros even to a dense model: read them here
        dataset = _calibration(tokenizer, config, calibration_texts) if config.quantize == "w8a8" else None
        has_ov_tokenizer = _trace(
            with_adapter(torch_model, plan.traced_adapter, config.merge), tokenizer, tmp, trust_remote_code
        )
        del torch_model
        gc.collect()  # the LoRA-injected model sits in a reference cycle: without this its weights stay through NNCF
        t_export = time.perf_counter()
        rate = resolve_sparse_rate(config.sparse_rate, sparsity.values())
        guarded = crash_guard(plan.shapes, sparsity, rate, plan.float_inputs) if config.quantize == "w8a8" else {}
        ir = quantize(ov.Core().read_model(tmp / IR_NAME), dataset, config, plan.float_inputs + list(guarded))
        layers, checked = _check_ir(ir, masks, 0 if config.merge else len(plan.ranks))
        store_runtime_options(ir, rate, config.inference_precision, config.kv_cache_precision, config.adapter_mode)
        options, read = options_of(ir), decode_weight_bytes(ir, rate)
        _save_ir(ir, tmp / IR_NAME)
        del ir
        report = build_report(
            plan,
            config,
            sparsity,
            rate,
            guarded,
            layers,
            checked,
            has_ov_tokenizer,
            dataset is not None,
            calibration_texts,
            _runtime_adapters(plan, config, tmp, trust_remote_code),
            {"load_and_trace": t_export - t0, "quantize_and_check": time.perf_counter() - t_export},
            read,
        )
        _write_beside(tmp, report, options)
    logger.info(
        "exported %s -> %s (%s, sparse rate %s, %d LoRA MatMuls) in %.1fs",
        plan.model,
        output,
        config.quantize,
        rate,
        report["lora_matmuls"],
        report["timing_s"]["total"],
    )
    return report


def _runtime_adapters(plan: _Plan, config: ExportConfig, ir_dir: Path, trust_remote_code: bool) -> dict:
    """Run-time mode: each adapter as the file GenAI applies beside this base IR's MatMuls."""
    from .genai import GENAI_ADAPTER_DIR, write_genai_adapter

    if config.adapter_mode != "runtime":
        return {}
    return {
        Path(a).name: write_genai_adapter(
            a, ir_dir, ir_dir / GENAI_ADAPTER_DIR / f"{Path(a).name}.safetensors", trust_remote_code
        )
        for a in plan.adapters
    }


def _write_beside(ir_dir: Path, report: ExportReport, options: dict) -> None:
    """The report, the compile-option files stock tools read, and the model card."""
    from .cards import write_ir_card

    write_json(ir_dir / REPORT_NAME, report)
    write_option_files(ir_dir, options)
    write_ir_card(ir_dir, report, options)
