"""The options an IR is meant to be compiled with: stored in the IR, read back for a compile, and written as files.

Two facts about OpenVINO's CPU plugin (2026.4) make these necessary:

* **Precision.** On CPUs with AMX (or AVX512-BF16) an f32 IR runs in **bf16** unless ``INFERENCE_PRECISION_HINT``
  says ``f32``; elsewhere it runs in f32. The export stores the precision it was meant to run in, so "the IR"
  means the same numbers on every CPU.
* ``compile_model`` applies only a few of the IR's ``runtime_options`` by itself (the KV-cache precision and the
  dynamic-quantization group size; not the inference precision, threads, streams or performance hint, nor the
  sparse rate). So the KV-cache precision is stored there for every loader, and the sparse rate and the precision
  there too, where :func:`ov_config` reads them, and in ``ov_config.json`` beside the IR for stock tools::

      OVModelForCausalLM.from_pretrained(ir_dir, ov_config=json.load(open(f"{ir_dir}/ov_config.json")))
      openvino_genai.LLMPipeline(ir_dir, "CPU", **json.load(open(f"{ir_dir}/ov_config.json")))
      benchmark_app -m ir_dir/openvino_model.xml -load_config ir_dir/benchmark_app_config.json
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from .config import BenchConfig
from .errors import ShearsError, first_line
from .io import write_json
from .ir import IR_NAME, ir_layers
from .kernel_guard import CRASH_REASON, SPARSE_RATE_KEY, crash_prone_layers
from .options import check_value

logger = logging.getLogger(__name__)

PRECISION_KEY = "INFERENCE_PRECISION_HINT"
KV_CACHE_KEY = "KV_CACHE_PRECISION"
#: the IR's compile options, flat: ``OVModelForCausalLM(ov_config=...)`` and ``LLMPipeline(**...)`` take it as is
OV_CONFIG_FILE = "ov_config.json"
#: the same options per device, as ``benchmark_app -load_config`` reads them
BENCHMARK_APP_CONFIG_FILE = "benchmark_app_config.json"
#: rt_info section saying what a run-time-adapter IR needs (its base MatMuls alone are not the tuned model)
DEPLOY_KEY = "shears_nncf"


def _stored(model, key: str, section: str = "runtime_options") -> Optional[str]:
    return model.get_rt_info([section, key]).astype(str) if model.has_rt_info([section, key]) else None


def store_runtime_options(
    model, rate: Optional[float], precision: str, kv_cache_precision: Optional[str] = None, adapter_mode: str = "in-ir"
) -> None:
    """Write the sparse rate, the inference precision and the KV-cache precision into the IR's ``runtime_options``;
    a run-time-adapter IR also says there that it is the base alone."""
    if kv_cache_precision is not None:  # applied by compile_model itself, in every loader
        model.set_rt_info(kv_cache_precision, ["runtime_options", KV_CACHE_KEY])
    if rate is not None:
        model.set_rt_info(str(rate), ["runtime_options", SPARSE_RATE_KEY])
    if precision != "default":
        model.set_rt_info(precision, ["runtime_options", PRECISION_KEY])
    model.set_rt_info(adapter_mode, [DEPLOY_KEY, "adapter_mode"])
    if adapter_mode == "runtime":
        model.set_rt_info(
            "the base model alone: apply a file of genai_adapters/ with openvino_genai.Adapter", [DEPLOY_KEY, "needs"]
        )


def _read(ir_dir: str | os.PathLike):
    import openvino as ov

    xml = Path(ir_dir) / IR_NAME
    if not xml.is_file():
        raise ShearsError(f"{ir_dir} has no {IR_NAME}; pass an IR folder written by 'shears-nncf export'")
    try:
        return ov.Core().read_model(xml)
    except RuntimeError as e:
        first = first_line(e, "unreadable")
        raise ShearsError(f"cannot read the IR {xml}: {first}; export it again") from None


def options_of(model, precision: Optional[str] = None, where: str = "the IR") -> dict[str, Any]:
    """The compile options of a read IR ``model``: its stored sparse rate and inference precision.

    ``precision`` (f32 | bf16 | default) overrides the stored one. The rate is left out, with a warning, for an
    IR that holds a layer the sparse kernel crashes on (an IR exported before the guard, or by other tools).
    """
    check_value(BenchConfig, "precision", precision)
    config: dict[str, Any] = {}
    rate = _stored(model, SPARSE_RATE_KEY)
    if rate is not None:
        risky = crash_prone_layers(ir_layers(model), float(rate))
        if risky:
            logger.warning(
                "not applying the stored sparse rate %s: %d layer(s) of %s would crash OpenVINO (%s), e.g. %s; "
                "export the model again with this version to keep them off the sparse kernel",
                rate,
                len(risky),
                where,
                CRASH_REASON,
                risky[0],
            )
        else:
            config[SPARSE_RATE_KEY] = float(rate)
    precision = precision or _stored(model, PRECISION_KEY) or "default"
    if precision != "default":
        config[PRECISION_KEY] = precision
    return config


def ov_config(ir_dir: str | os.PathLike, precision: Optional[str] = None) -> dict[str, Any]:
    """The compile options for the IR folder ``ir_dir``, for ``ov_config=`` (see :func:`options_of`)."""
    return options_of(_read(ir_dir), precision, str(ir_dir))


def adapter_mode_of(ir_dir: str | os.PathLike) -> str:
    """``runtime`` for a base IR whose adapters GenAI applies at run time, else ``in-ir``."""
    return _stored(_read(ir_dir), "adapter_mode", DEPLOY_KEY) or "in-ir"


def write_option_files(ir_dir: str | os.PathLike, options: dict[str, Any]) -> None:
    """``ov_config.json`` (flat) and ``benchmark_app_config.json`` (per device, strings) beside the IR."""
    write_json(Path(ir_dir) / OV_CONFIG_FILE, options)
    write_json(Path(ir_dir) / BENCHMARK_APP_CONFIG_FILE, {"CPU": {k: str(v) for k, v in options.items()}})


def compiled_precision(compiled_model) -> str:
    """The precision a compiled model runs its float ops in (``f32``, ``bf16``, ``f16``)."""
    return compiled_model.get_property(PRECISION_KEY).get_type_name()
