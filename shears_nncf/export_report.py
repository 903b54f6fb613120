"""What an export writes about itself: ``export_report.json`` and the summary the command line prints."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from .calibration import default_calibration_source, describe_source
from .config import ExportConfig
from .reports import ExportReport

#: A layer counts as pruned when at least this fraction of its weights is zero (dense random weights have ~0).
PRUNED_MIN_SPARSITY = 0.1
_QUANT_DTYPES = {
    "w8a8": "int8 weights + int8 activations",
    "int8-weights": "int8 weights, float activations",
    "int4-weights": "int4 weights, float activations",
    "none": "float32",
}
_FLOAT_INPUT_DTYPES = {"int8": "int8 weights", "int4": "int4 weights (the output head int8)"}


def build_report(
    plan,
    config: ExportConfig,
    sparsity: dict[str, float],
    rate: Optional[float],
    guarded: dict[str, str],
    layers: dict[str, dict],
    checked: int,
    has_ov_tokenizer: bool,
    calibrated: bool,
    calibration_texts,
    genai: dict,
    timing: dict[str, float],
    read: dict[str, int],
) -> ExportReport:
    """The report of an export ``plan`` (:class:`shears_nncf.exporting._Plan`), from what each step found."""
    from peft.utils import CONFIG_NAME

    from .io import read_json

    pruned = [v for v in sparsity.values() if v >= PRUNED_MIN_SPARSITY]
    float_inputs = plan.float_inputs + list(guarded)
    adapter_cfg = read_json(Path(plan.traced_adapter) / CONFIG_NAME, "adapter config") if plan.traced_adapter else {}
    source = calibration_texts if calibration_texts is not None else config.calibration or default_calibration_source()
    float_dtype = _FLOAT_INPUT_DTYPES[config.advanced.float_input_weights]
    return {
        "model": plan.model,
        "adapter": plan.traced_adapter,
        "adapters": plan.adapters,
        "quantize": config.quantize,
        "precision": _QUANT_DTYPES[config.quantize]
        + (f" (float inputs, {float_dtype}: {len(float_inputs)} ignored-scope Linears)" if float_inputs else ""),
        # pruned base layers that W8A8 covers: the only ones OpenVINO's sparse kernel can take
        "sparse_kernel_layers": sum(
            1
            for k, v in layers.items()
            if k in sparsity and v["activations"] == "int8" and sparsity[k] >= PRUNED_MIN_SPARSITY
        ),
        "float_input_layers": float_inputs,
        # pruned layers kept off the sparse kernel because OpenVINO crashes on them, with the reason
        "sparse_kernel_guarded_layers": guarded,
        "sparse_rate": rate,
        "min_pruned_sparsity": round(min(pruned), 4) if pruned else None,
        "mean_pruned_sparsity": round(float(np.mean(pruned)), 4) if pruned else 0.0,
        "pruned_layers": len(pruned),
        "zeros_checked_layers": checked,
        # run-time adapters: the files OpenVINO GenAI applies beside the base MatMuls, and how to load each
        "genai_adapters": genai,
        # weight bytes per decoded token: this IR (its sparse-kernel layers as AMX reads them), dense int8 / int4
        "weight_bytes_per_token": read,
        "lora_matmuls": sum(1 for v in layers.values() if v["role"] != "base"),
        "adapter_ranks": plan.ranks,
        "adapter_config": {
            k: adapter_cfg.get(k)
            for k in ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "base_model_name_or_path")
        }
        if adapter_cfg
        else None,
        "openvino_tokenizer": has_ov_tokenizer,
        "calibration": {"source": describe_source(source), "nsamples": config.nsamples, "seqlen": config.seqlen}
        if calibrated
        else None,
        "config": asdict(config),
        "timing_s": {**{k: round(v, 2) for k, v in timing.items()}, "total": round(sum(timing.values()), 2)},
        "torch_sparsity": {k: round(v, 4) for k, v in sparsity.items()},
        "layers": layers,
        "versions": _versions(),
    }


def format_report(report: ExportReport, output: str | os.PathLike) -> str:
    """What the IR in ``output`` is and how each run-time adapter is used, for the command line."""
    from .genai import GENAI_ADAPTER_DIR

    n_kernel = len(report["sparse_kernel_guarded_layers"])
    lines = [
        f"{report['precision']}, sparse rate {report['sparse_rate']}, {report['pruned_layers']} pruned layers "
        f"(min sparsity {report['min_pruned_sparsity']}, {report['sparse_kernel_layers']} of them W8A8), "
        f"{report['lora_matmuls']} unmerged LoRA MatMuls, {n_kernel} layers kept off the sparse kernel, "
        f"inference precision {report['config']['inference_precision']}, {report['timing_s']['total']:.1f} s "
        f"-> {output} (compile options: {output}/ov_config.json)",
        "weight MB read per decoded token: "
        + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in report["weight_bytes_per_token"].items()),
    ]
    lines += [
        f"run-time adapter {name}: {output}/{GENAI_ADAPTER_DIR}/{info['file']} ({info['layers']} layers; "
        f"shears-nncf generate {output} --adapter {name})"
        for name, info in report["genai_adapters"].items()
    ]
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import nncf
    import openvino as ov
    from optimum.intel.version import __version__ as optimum_intel

    return {"openvino": ov.get_version(), "nncf": nncf.__version__, "optimum_intel": optimum_intel}
