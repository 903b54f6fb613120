"""The SQFT merge stage, folder in, folder out: a sparsity-masked sub-adapter merged into the sparse model
(:func:`shears_nncf.adapters.merge_masked` does it in memory), written as one plain sparse Hugging Face model."""

from __future__ import annotations

import logging
import os

from .adapters import check_masked, load_adapter, merge_masked
from .io import write_json
from .reports import REPORT_FILES, MergeReport

logger = logging.getLogger(__name__)


def merge(
    model: str | os.PathLike, adapter: str | os.PathLike, output: str | os.PathLike, trust_remote_code: bool = False
) -> MergeReport:
    """Write ``model`` with the masked ``adapter`` merged in: one plain sparse Hugging Face model folder."""
    from .cards import write_merged_card
    from .io import atomic_output_dir
    from .models import load_model, load_tokenizer, save_model

    check_masked(adapter)
    with atomic_output_dir(output) as tmp:
        base = load_model(os.fspath(model), trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(os.fspath(model), trust_remote_code=trust_remote_code)
        merged, kept = merge_masked(load_adapter(base, adapter))
        save_model(merged, tokenizer, tmp)
        report = {
            "model": os.fspath(model),
            "adapter": os.fspath(adapter),
            "merged_layers": len(kept),
            "zeros_kept": sum(kept.values()),
            "zeros_kept_per_layer": kept,
        }
        write_json(tmp / REPORT_FILES["merge"], report)
        write_merged_card(tmp, model, adapter, report)
    logger.info("merged %s into %s -> %s (%d layers, every zero kept)", adapter, model, output, len(kept))
    return report
