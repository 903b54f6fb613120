"""shears-nncf: Shears (Wanda sparsity + elastic-rank LoRA trained with NLS) for Hugging Face LLMs,
exported to OpenVINO with unmerged adapters so that the CPU's sparse int8 kernels can use the zeros.

The public API mirrors the pipeline stages; each is imported on first use so that ``import shears_nncf``
stays cheap::

    import shears_nncf as sn
    sn.prune("smollm2-135m", "out/sparse", sn.WandaConfig(sparsity_level=0.5))
    sn.train("out/sparse", "out/super", cfg.nls, cfg.training)
    sn.search("out/sparse", "out/super", "out/sub", sn.SearchConfig(strategy="hill-climbing"))
    sn.export("out/sparse", "out/ir", adapter="out/sub", config=sn.ExportConfig(quantize="w8a8"))
    sn.bench("out/ir")
    sn.generate("out/ir", ["Q: 12 + 30 = ?"], adapters=["sub"])   # OpenVINO GenAI, run-time adapters
"""
from __future__ import annotations

import importlib

from .config import (  # noqa: F401  (re-exported)
    BenchConfig,
    ElasticityConfig,
    EvalConfig,
    ExportConfig,
    LoraSettings,
    NLSConfig,
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

_LAZY = {
    "prune": "prune",
    "train": "train",
    "search": "search",
    "export": "export",
    "bench": "bench",
    "evaluate": "evaluate",
    "generate": "genai",
    "merge": "adapters",
    "run": "pipeline",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'shears_nncf' has no attribute {name!r}")
