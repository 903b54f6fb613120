"""shears-nncf: Shears (Wanda sparsity + elastic-rank LoRA trained with NLS) for Hugging Face LLMs,
exported to OpenVINO with unmerged adapters so that the CPU's sparse int8 kernels can use the zeros.

Each pipeline stage is a function that takes folders (``prune``, ``train``, ``search``, ``export``, ``bench``,
``evaluate``, ``merge``, ``generate``, ``run``); each has an in-memory twin that takes and returns a model
(``sparsify``, ``add_elastic_lora`` + ``NLSCallback``, ``select_subadapter``, ``to_openvino``, ``quantize``).
Every heavy import (torch, transformers, OpenVINO) sits inside the functions, so ``import shears_nncf`` stays cheap::

    import shears_nncf as sn
    sn.prune("smollm2-135m", "out/sparse", sn.PruningConfig(sparsity_level=0.5))
    sn.train("out/sparse", "out/super", cfg.nls, cfg.training)
    sn.search("out/sparse", "out/super", "out/sub", sn.SearchConfig(strategy="hill-climbing"))
    sn.export("out/sparse", "out/ir", adapter="out/sub", config=sn.ExportConfig(quantize="w8a8"))
    sn.bench("out/ir")
    sn.generate("out/ir", ["Q: 12 + 30 = ?"], adapters=["sub"])   # OpenVINO GenAI, run-time adapters
"""

from __future__ import annotations

import importlib

from .config import (  # noqa: F401  (re-exported)
    AdvancedExportConfig,
    BenchConfig,
    ElasticityConfig,
    EvalConfig,
    ExportConfig,
    LoraSettings,
    NLSConfig,
    PruningConfig,
    SearchConfig,
    ShearsConfig,
    TrainingConfig,
    WandaConfig,
)
from .config_file import load_config, save_config  # noqa: F401
from .errors import ShearsError  # noqa: F401
from .reports import (  # noqa: F401
    BenchReport,
    EvalReport,
    ExportReport,
    MergeReport,
    RunReport,
    SearchReport,
    SparsityReport,
    TrainingReport,
)

__version__ = "0.1.0"

#: public function -> the module that defines it. The modules import torch / PEFT (seconds), so each function is
#: imported on first use and then bound here; no module is named like a function, so no later submodule import
#: can rebind a name.
_FUNCTIONS = {
    "prune": "pruning",
    "sparsify": "pruning",
    "train": "training",
    "add_elastic_lora": "elastic",
    "NLSCallback": "training",
    "search": "selection",
    "select_subadapter": "selection",
    "export": "exporting",
    "to_openvino": "exporting",
    "quantize": "quantization",
    "bench": "benchmarking",
    "evaluate": "evaluation",
    "merge": "merging",
    "generate": "genai",
    "run": "pipeline",
}

__all__ = [
    "BenchConfig",
    "ElasticityConfig",
    "EvalConfig",
    "ExportConfig",
    "AdvancedExportConfig",
    "LoraSettings",
    "NLSConfig",
    "PruningConfig",
    "SearchConfig",
    "ShearsConfig",
    "TrainingConfig",
    "WandaConfig",
    "load_config",
    "save_config",
    "ShearsError",
    "BenchReport",
    "EvalReport",
    "ExportReport",
    "MergeReport",
    "RunReport",
    "SearchReport",
    "SparsityReport",
    "TrainingReport",
    *_FUNCTIONS,
]


def __getattr__(name: str):
    if name in _FUNCTIONS:
        value = getattr(importlib.import_module(f".{_FUNCTIONS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shears_nncf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
