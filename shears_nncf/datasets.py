"""Instruction data for NLS training: LLM-Adapters JSON, GSM8K JSON lines or Hugging Face datasets.

Every source is normalised to LLM-Adapters records (``instruction``, ``input``, ``output``) and rendered with
the Alpaca-style prompt that LLM-Adapters (and so the Shears paper) trains and evaluates with: the ``label``
response format ("the correct answer is answer2"). The ``answer-text`` format turns each multiple-choice record
into the form that :mod:`shears_nncf.likelihood` scores, lm-evaluation-harness's: the prompt
``"Question: ...\nAnswer:"`` and the gold choice's text as the response (BoolQ `` yes`` / `` no``), built by
:func:`shears_nncf.likelihood.parse_question` itself, so that tuning and scoring share one rule. The validation
split carved off the training data is written next to the super-adapter as ``validation.jsonl``, so the
search stage scores sub-adapters on exactly the records that training never saw.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .config import RESPONSE_FORMATS
from .errors import ShearsError, first_line
from .io import looks_like_path, read_json_records, read_text
from .prompts import CONTEXT_KEY, PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

VALIDATION_FILE = "validation.jsonl"
IGNORE_INDEX = -100  # labels the loss ignores (PyTorch's cross-entropy default)

_FORMATS = "LLM-Adapters records (instruction, input, output) or GSM8K records (question, answer)"


# ------------------------------------------------------------------------------------------- records


def normalize_record(raw: Any, where: str = "record") -> dict:
    """Map one raw record to ``{"instruction", "input", "output"}`` (an LLM-Adapters ``answer`` is kept)."""
    if not isinstance(raw, dict):
        raise ShearsError(f"{where} is a {type(raw).__name__}, not an object; the data must be {_FORMATS}")
    if "instruction" in raw:
        out = {"instruction": raw["instruction"], "input": raw.get("input") or "", "output": raw.get("output")}
        if "answer" in raw:
            out["answer"] = raw["answer"]
        if isinstance(raw.get(CONTEXT_KEY), str) and raw.get("response_format") == "answer-text":
            out[CONTEXT_KEY], out["response_format"] = raw[CONTEXT_KEY], "answer-text"  # as answer_text_record wrote it
    elif "question" in raw:  # GSM8K: the worked solution ending in '#### N' is the target
        out = {"instruction": raw["question"], "input": "", "output": raw.get("answer")}
    else:
        raise ShearsError(f"{where} has keys {sorted(raw)}; expected {_FORMATS}")
    target = "output" if "instruction" in raw else "answer"
    if not isinstance(out["output"], str):
        raise ShearsError(f"{where} has no '{target}' text; every record needs one (expected {_FORMATS})")
    if not isinstance(out["instruction"], str) or not out["instruction"].strip():
        raise ShearsError(f"{where} has an empty instruction/question; remove the record or fill it in")
    if not isinstance(out["input"], str):
        raise ShearsError(f"{where} has a non-text 'input' ({type(out['input']).__name__}); make it a string")
    return out


def read_records(path: str | os.PathLike) -> list[dict]:
    """Raw records of a JSON array file or a JSON-lines file (the format is detected from the first character)."""
    p = Path(path)
    if not read_text(p, "data file").strip():
        raise ShearsError(f"data file {p} is empty; pass a file with at least one record")
    records = read_json_records(p, "data file")
    if not isinstance(records, list):
        raise ShearsError(f"data file {p} holds a JSON {type(records).__name__}, not a list of records; fix the file")
    if not records:
        raise ShearsError(f"data file {p} holds no records; pass a file with at least one record")
    return records


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _hf_records(name: str) -> list[dict]:
    """Records of a Hugging Face dataset's train split; ``NAME:CONFIG`` picks a configuration."""
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split="train")
    except Exception as e:  # offline, unknown name, missing config: the library raises many types
        first = first_line(e)
        raise ShearsError(
            f"cannot load Hugging Face dataset {name!r} ({first}); pass a local JSON / JSON-lines file instead, "
            "or run where the Hub can be reached"
        ) from None
    return list(ds)


def _answer_task(record: dict, source: str):
    """The multiple-choice task whose lm-eval phrasing a record takes: its file's LLM-Adapters folder (``.../boolq/
    train.json``), else its answer keyword (``true``/``false``: BoolQ, ``solutionN``: PIQA, ``optionN``: WinoGrande,
    ``answerN``: ARC's form, which OpenBookQA and Social IQa share)."""
    from .tasks import TASKS

    folder = Path(source).parent.name.lower()
    by_folder = {name.lower(): task for name, task in TASKS.items() if task.kind == "keyword"}
    if folder in by_folder:
        return by_folder[folder]
    answer = str(record.get("answer", "")).strip()
    for prefix, name in (
        ("true", "boolq"),
        ("false", "boolq"),
        ("solution", "piqa"),
        ("option", "winogrande"),
        ("answer", "ARC-Easy"),
    ):
        if answer.startswith(prefix):
            return TASKS[name]
    raise ShearsError(
        f"record {str(record.get('instruction', ''))[:60]!r} of {source} is not a multiple-choice record "
        f"(answer {answer!r}); the answer-text response format takes LLM-Adapters commonsense records"
    )


def answer_text_record(record: dict, source: str = "") -> dict:
    """An LLM-Adapters multiple-choice record as lm-eval scores it: its ``context`` is the prompt and its ``output``
    the gold choice's continuation, both from :func:`shears_nncf.likelihood.parse_question` (WinoGrande: the
    sentence filled with the gold option, then the rest of it)."""
    from .likelihood import parse_question

    question = parse_question(_answer_task(record, source), record)
    return {
        **record,
        CONTEXT_KEY: question.contexts[question.label],
        "output": question.continuations[question.label],
        "response_format": "answer-text",
    }


def load_training_records(source: str, response_format: str = "label") -> list[dict]:
    """Normalised records of one source: a local file, or a Hugging Face dataset name if no such file exists.

    A record without an output is an error; one whose output is empty (3 of LLM-Adapters' math_data.json)
    has nothing to learn and is skipped. ``response_format`` ``answer-text`` renders every record with
    :func:`answer_text_record`.
    """
    if response_format not in RESPONSE_FORMATS:
        raise ShearsError(f"response format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}")
    if os.path.isfile(source):
        raw = read_records(source)
    elif os.path.exists(source):
        raise ShearsError(f"data path {source} is a folder; pass a JSON or JSON-lines file")
    elif looks_like_path(source):
        raise ShearsError(f"data file {source} does not exist; check the path")
    else:
        raw = _hf_records(source)
        if not raw:
            raise ShearsError(f"Hugging Face dataset {source!r} has no training records")
    records = [normalize_record(r, f"record {i} of {source}") for i, r in enumerate(raw)]
    if response_format == "answer-text":
        records = [answer_text_record(r, source) for r in records]
    kept = [r for r in records if r["output"].strip()]
    if not kept:
        raise ShearsError(f"every record of {source} has an empty output; pass data with responses to learn")
    if len(kept) < len(records):
        logger.warning("Skipping %d records of %s whose output is empty", len(records) - len(kept), source)
    return kept


def load_instruction_data(
    paths: str | Sequence[str],
    val_set_size: float = 0.0,
    seed: int = 42,
    max_train_samples: Optional[int] = None,
    response_format: str = "label",
) -> tuple[list[dict], list[dict]]:
    """Read every source, then carve a seeded validation split off the pooled records.

    ``val_set_size`` is a fraction (< 1) or a number of records (>= 1), as in LLM-Adapters. Returns
    ``(train, validation)`` lists of normalised records; the split is that of ``datasets.train_test_split``
    (the same records in either ``response_format``: the split is drawn on record indices).
    """
    sources = [paths] if isinstance(paths, str) else list(paths)
    sources = [s.strip() for s in sources if s and s.strip()]
    if not sources:
        raise ShearsError("no training data; pass --data FILE[,FILE...] or set training.data in the config")
    records: list[dict] = []
    for src in sources:
        got = load_training_records(src, response_format)
        logger.info("Read %d records from %s", len(got), src)
        records.extend(got)
    n_val = _validation_count(val_set_size, len(records))
    if n_val:
        import datasets

        # One column of record indices keeps the split independent of the records' (mixed) key sets.
        split = datasets.Dataset.from_dict({"i": list(range(len(records)))}).train_test_split(
            test_size=n_val, shuffle=True, seed=seed
        )
        train = [records[i] for i in split["train"]["i"]]
        val = [records[i] for i in split["test"]["i"]]
    else:
        train, val = records, []
    if max_train_samples is not None:
        train = train[:max_train_samples]
    logger.info("Instruction data: %d training and %d validation records", len(train), len(val))
    return train, val


def _validation_count(val_set_size: float, n: int) -> int:
    if val_set_size < 0:
        raise ShearsError(f"val_set_size must be >= 0 (a fraction < 1 or a number of records), got {val_set_size}")
    count = round(val_set_size * n) if val_set_size < 1 else int(val_set_size)
    if val_set_size > 0 and count == 0:
        count = 1
    if count >= n:
        raise ShearsError(
            f"val_set_size {val_set_size} leaves no training records out of {n}; use a smaller fraction or count"
        )
    return count


def load_validation(adapter_dir: str | os.PathLike) -> list[dict]:
    """The validation records that training carved off, read from a super-adapter folder."""
    path = Path(adapter_dir) / VALIDATION_FILE
    if not path.is_file():
        raise ShearsError(
            f"{adapter_dir} has no {VALIDATION_FILE}; pass the super-adapter folder written by 'shears-nncf train'"
        )
    return read_json_records(path, "validation file")


# -------------------------------------------------------------------------------- prompts / tokens


def tokenize_record(
    record: dict,
    tokenizer,
    cutoff_len: int = 256,
    train_on_inputs: bool = False,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """``input_ids`` / ``attention_mask`` / ``labels`` for one record, as LLM-Adapters'
    ``generate_and_tokenize_prompt``.

    The prompt is truncated to ``cutoff_len`` tokens and EOS appended when there is room. Without
    ``train_on_inputs`` the prompt tokens are labelled ``-100`` so that only the response is learnt.
    An answer-text record is split into context and response tokens as the likelihood scorer splits them
    (:func:`shears_nncf.likelihood.encode_pair`, no special tokens), so the response tokens learnt are those scored.
    """
    if CONTEXT_KEY in record and record.get("response_format") == "answer-text":
        return _tokenize_answer_text(record, tokenizer, cutoff_len, train_on_inputs, add_eos)
    ids = tokenizer(format_prompt(record), truncation=True, max_length=cutoff_len, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos) and len(ids) < cutoff_len:
        ids = ids + [eos]
    labels = list(ids)
    if not train_on_inputs:
        prompt = tokenizer(
            format_prompt(record, with_output=False), truncation=True, max_length=cutoff_len, add_special_tokens=True
        )["input_ids"]
        n = min(len(prompt), len(labels))
        labels[:n] = [IGNORE_INDEX] * n
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _tokenize_answer_text(record: dict, tokenizer, cutoff_len: int, train_on_inputs: bool, add_eos: bool) -> dict:
    from .likelihood import encode_pair

    ctx, cont = encode_pair(tokenizer, record[CONTEXT_KEY], record["output"])
    ids = (ctx + cont)[:cutoff_len]
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and len(ids) < cutoff_len:
        ids = ids + [eos]
    labels = list(ids) if train_on_inputs else [IGNORE_INDEX] * min(len(ctx), len(ids)) + ids[len(ctx) :]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_records(
    records: Sequence[dict], tokenizer, cutoff_len: int = 256, train_on_inputs: bool = False, add_eos: bool = True
):
    """A ``datasets.Dataset`` of tokenized records; records whose response was cut off entirely are dropped."""
    import datasets

    def encode(batch: dict) -> dict:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = [tokenize_record(r, tokenizer, cutoff_len, train_on_inputs, add_eos) for r in rows]
        return {k: [o[k] for o in out] for k in ("input_ids", "attention_mask", "labels")}

    columns = ["instruction", "input", "output", CONTEXT_KEY, "response_format"]
    ds = datasets.Dataset.from_dict({c: [r.get(c) or "" for r in records] for c in columns})
    ds = ds.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
    before = len(ds)
    ds = ds.filter(lambda r: any(t != IGNORE_INDEX for t in r["labels"]), desc="Dropping records without targets")
    if len(ds) < before:
        logger.warning(
            "%d of %d records have no response tokens within cutoff_len=%d and are skipped; raise "
            "cutoff_len to keep them",
            before - len(ds),
            before,
            cutoff_len,
        )
    if len(ds) == 0:
        raise ShearsError(
            f"no record keeps a response within cutoff_len={cutoff_len} tokens; raise training.cutoff_len"
        )
    return ds
