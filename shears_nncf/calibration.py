"""Calibration data: text sources turned into fixed-length token windows.

A *source* is a local file (plain text, JSON lines with a ``"text"`` field, or a JSON list of such records
or strings; training records, e.g. LLM-Adapters' ``{"instruction", "output"}``, count as their prompt with its
response, as in training), a Hugging Face dataset name (``NAME[:CONFIG][@SPLIT]``, loaded with
``datasets.load_dataset``), or an in-memory list of strings. Wanda statistics (stage 1) and the W8A8 calibration
of the OpenVINO export (stage 4) both draw their windows from here, so the two see data prepared the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from .datasets import format_prompt, normalize_record
from .errors import ShearsError, first_line
from .io import looks_like_path, read_json_records, read_text, shared_data_file

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, Sequence[str]]

#: Wanda's calibration set: C4 documents, read from the shared data folder beside the checkout.
DEFAULT_CALIBRATION = "calibration/c4_sample.json"
#: The usual perplexity text: wikitext-2-raw-v1 test rows, joined with blank lines.
WIKITEXT2_TEST = "calibration/wikitext2_test.json"


def default_calibration_source() -> str:
    """The built-in calibration source, or a clear error when the shared data folder is not there."""
    path = shared_data_file(DEFAULT_CALIBRATION)
    if path is None:
        raise ShearsError(
            f"no calibration source given and ../shared/data/{DEFAULT_CALIBRATION} is not beside the repository; "
            "pass --calibration with a text / JSON-lines file or a Hugging Face dataset name"
        )
    return str(path)


def describe_source(source: Source) -> str:
    """A short JSON-friendly name of a source for reports."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{len(source)} in-memory texts>"


def _record_text(record: Any, where: str) -> str:
    """A record's text: a string, its ``"text"``, or a training record (instruction / GSM8K question) as the trainer
    formats it (prompt + response), so that the W8A8 ranges can come from the task the model is deployed for.
    Unlike training, a record with an empty response still counts (its prompt is data all the same)."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record, dict) and ("instruction" in record or "question" in record):
        return format_prompt(normalize_record(record, where))
    keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
    raise ShearsError(
        f'{where} has no string \'text\' field (found: {keys}); give records like {{"text": "..."}} '
        'or training records ({"instruction": ..., "output": ...})'
    )


def _read_text_file(path: Path, what: str) -> list[str]:
    """Documents of a local file: JSON lines / a JSON list of records, or the whole file as one text."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return [read_text(path, what)]
    return [_record_text(r, f"{what} {path} record {i + 1}") for i, r in enumerate(read_json_records(path, what))]


def _load_hf_dataset(name: str, what: str) -> list[str]:
    """``NAME[:CONFIG][@SPLIT]`` through ``datasets.load_dataset`` (split defaults to train, column ``text``)."""
    spec, _, split = name.partition("@")
    path, _, config = spec.partition(":")
    try:
        import datasets

        data = datasets.load_dataset(path, config or None, split=split or "train")
    except Exception as e:  # offline, unknown name, missing config: all mean the same to the user
        first = first_line(e)
        raise ShearsError(
            f"cannot load {what} {name!r} as a Hugging Face dataset ({first}); "
            "offline or for a missing dataset, pass a local text / JSON-lines file instead"
        ) from None
    column = (
        "text"
        if "text" in data.column_names
        else next((c for c, f in data.features.items() if getattr(f, "dtype", None) == "string"), None)
    )
    if column is None:
        raise ShearsError(f"{what} dataset {name!r} has no text column (columns: {', '.join(data.column_names)})")
    return list(data[column])


def load_texts(source: Source, what: str = "calibration source") -> list[str]:
    """The documents of a source, in file order."""
    if not isinstance(source, (str, os.PathLike)):
        texts = list(source)
        if not all(isinstance(t, str) for t in texts):
            raise ShearsError(f"{what} must be a list of strings, a file, or a dataset name")
        return texts
    name = os.fspath(source)
    path = Path(name).expanduser()
    if path.is_file():
        texts = _read_text_file(path, what)
    elif path.exists() or looks_like_path(name):
        raise ShearsError(f"{what} {name} is not a readable file; check the path, or give a Hugging Face dataset name")
    else:
        texts = _load_hf_dataset(name, what)
    if not any(t.strip() for t in texts):
        raise ShearsError(f"{what} {name} contains no text")
    return texts


def token_stream(tokenizer, texts: Sequence[str], add_special_tokens: bool = False) -> torch.Tensor:
    """The documents joined with blank lines and tokenized once, as a 1-D LongTensor."""
    ids = tokenizer("\n\n".join(texts), add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_windows(
    tokenizer, source: Optional[Source] = None, nsamples: int = 128, seqlen: int = 2048, seed: int = 0
) -> torch.LongTensor:
    """``nsamples`` random, non-overlapping windows of ``seqlen`` tokens from the joined documents.

    Like Wanda's C4 loader the windows start at random places, but they are cut from one token stream
    (documents joined with blank lines) at a random offset and never overlap, so a source of T tokens
    yields at most ``T // seqlen`` distinct windows. The same seed gives the same windows. ``source=None``
    means the built-in C4 sample.
    """
    if nsamples < 1 or seqlen < 1:
        raise ShearsError(f"nsamples and seqlen must be positive, got {nsamples} and {seqlen}")
    source = default_calibration_source() if source is None else source
    ids = token_stream(tokenizer, load_texts(source))
    slots = ids.numel() // seqlen
    if slots < nsamples:
        raise ShearsError(
            f"calibration source {describe_source(source)} has {ids.numel()} tokens, fewer than nsamples x seqlen = "
            f"{nsamples} x {seqlen} = {nsamples * seqlen}; lower --nsamples / --seqlen or give a longer source"
        )
    gen = torch.Generator().manual_seed(seed)
    offset = int(torch.randint(0, ids.numel() - slots * seqlen + 1, (1,), generator=gen))
    chosen = torch.randperm(slots, generator=gen)[:nsamples]
    windows = ids[offset : offset + slots * seqlen].view(slots, seqlen)[chosen]
    logger.info(
        "Calibration: %d windows x %d tokens from %s (%d tokens)",
        nsamples,
        seqlen,
        describe_source(source),
        ids.numel(),
    )
    return windows


def causal_lm_inputs(input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The default NNCF transform: a batch of windows as the keyword inputs of a causal LM."""
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def as_nncf_dataset(
    tokenizer,
    source: Optional[Source] = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    batch_size: int = 1,
    transform_fn: Optional[Callable[[torch.Tensor], Any]] = None,
):
    """An ``nncf.Dataset`` of the same windows, ``batch_size`` per item, mapped through ``transform_fn``.

    ``transform_fn`` receives a ``[batch, seqlen]`` LongTensor; the default gives ``input_ids`` and an
    all-ones ``attention_mask`` (torch). An OpenVINO model wants numpy arrays and its own extra inputs,
    so stage 4 passes its own transform.
    """
    import nncf

    windows = calibration_windows(tokenizer, source, nsamples, seqlen, seed)
    return nncf.Dataset(list(windows.split(batch_size)), transform_fn or causal_lm_inputs)
