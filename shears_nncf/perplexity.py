"""Perplexity over non-overlapping windows of one long text: the wikitext-2 measure of the Wanda paper."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calibration import WIKITEXT2_TEST, load_texts
from .datasets import IGNORE_INDEX
from .errors import ShearsError
from .io import shared_data_file

logger = logging.getLogger(__name__)


def wikitext2_test_file() -> Path:
    """The shared wikitext-2-raw-v1 test rows (JSON lines with "text")."""
    path = shared_data_file(WIKITEXT2_TEST)
    if path is None:
        raise ShearsError(
            f"../shared/data/{WIKITEXT2_TEST} is not beside the repository; pass the perplexity text or file"
        )
    return path


def _joined_text(text_or_source: Union[str, os.PathLike, Sequence[str]]) -> str:
    """Text with whitespace is taken as it is; a file, dataset name or list of texts is joined with blank lines."""
    if isinstance(text_or_source, str) and any(c.isspace() for c in text_or_source):
        return text_or_source
    return "\n\n".join(load_texts(text_or_source, what="perplexity text"))


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of ``labels`` under ``logits`` (positions labelled
    ``IGNORE_INDEX`` skipped), and how many tokens it sums: perplexity and the search's validation loss."""
    target = labels[:, 1:]
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll.item(), int((target != IGNORE_INDEX).sum())


def perplexity(
    model: nn.Module,
    tokenizer,
    text_or_source: Union[str, os.PathLike, Sequence[str]],
    seqlen: int = 2048,
    max_windows: Optional[int] = None,
    batch_size: int = 1,
) -> float:
    """exp(mean next-token NLL) over the first ``max_windows`` non-overlapping ``seqlen``-token windows.

    The text is tokenized once (as ``tokenizer(text)`` does, special tokens included) and cut into windows;
    each window is scored on its own, every token but the first predicted, as in the Wanda / SparseGPT
    evaluation. ``text_or_source`` is raw text (anything with whitespace), a text / JSON-lines file, a
    dataset name, or a list of texts joined with blank lines (the wikitext-2 convention).
    """
    if seqlen < 2:
        raise ShearsError(f"perplexity needs windows of at least 2 tokens, got seqlen={seqlen}")
    ids = torch.tensor(tokenizer(_joined_text(text_or_source), verbose=False)["input_ids"], dtype=torch.long)
    n = ids.numel() // seqlen if max_windows is None else min(ids.numel() // seqlen, max_windows)
    if n < 1:
        raise ShearsError(
            f"the perplexity text has {ids.numel()} tokens, fewer than one window of {seqlen}; lower seqlen"
        )
    windows = ids[: n * seqlen].view(n, seqlen)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.inference_mode():
        for batch in tqdm(windows.split(batch_size), desc="Perplexity", unit="batch", leave=False):
            batch = batch.to(device)
            batch_nll, tokens = token_nll(model(input_ids=batch, use_cache=False).logits, batch)
            nll, count = nll + batch_nll, count + tokens
    ppl = math.exp(nll / count)
    logger.info("Perplexity %.3f over %d windows of %d tokens", ppl, n, seqlen)
    return ppl
