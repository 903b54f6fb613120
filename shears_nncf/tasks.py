"""LLM-Adapters evaluation tasks: where their data lives, the prompt, and how an answer is read and scored.

The extraction rules reproduce LLM-Adapters' ``evaluate.py`` / ``commonsense_evaluate.py`` (the numbers of
the Shears paper come from them), quirks included, so that accuracies stay comparable:

* arithmetic tasks: commas dropped, the *last* number (``-?\\d+\\.?\\d*``) is the prediction, ``inf`` if there is
  none; correct when within 1e-3 of the label;
* AQuA: the *first* capital ``A``-``E`` anywhere in the response (so "After ..." reads as ``A``);
* commonsense tasks: the *first* occurrence of one of the task's answer keywords (case-sensitive), ``""`` if none.

Prompts are the Alpaca template of :func:`shears_nncf.prompts.format_prompt` (the one the adapters are
trained with). Generation is batched, left-padded and greedy, through a :data:`GenerateFn` so that any object with a
Hugging Face style ``.generate`` (a torch model, a PEFT model, an ``OVModelForCausalLM``) can be scored.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from tqdm.auto import tqdm

from .errors import ShearsError
from .io import data_root as shared_data_root
from .io import read_json_records
from .prompts import format_prompt

logger = logging.getLogger(__name__)

#: Maps a batch of prompts to the generated continuations (prompt not included).
GenerateFn = Callable[[list[str]], list[str]]

Prediction = Union[str, float]

NUMBER_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Task:
    """One LLM-Adapters evaluation set and its answer format."""

    name: str  # folder name under llm_adapters/, as LLM-Adapters spells it
    kind: str  # "number" | "letter" | "keyword"
    keywords: tuple[str, ...] = ()
    max_new_tokens: int = 32

    def extract(self, response: str) -> Prediction:
        return extract_answer(self, response)

    def is_correct(self, prediction: Prediction, label: str) -> bool:
        return is_correct(self, prediction, label)


def _keywords(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


_MATH = {
    name: Task(name, "number", max_new_tokens=256)
    for name in ("gsm8k", "mawps", "SVAMP", "AddSub", "MultiArith", "SingleEq")
}
_COMMONSENSE = {
    "boolq": Task("boolq", "keyword", ("true", "false")),
    "piqa": Task("piqa", "keyword", _keywords("solution", 2)),
    "social_i_qa": Task("social_i_qa", "keyword", _keywords("answer", 5)),
    "winogrande": Task("winogrande", "keyword", _keywords("option", 2)),
    "ARC-Easy": Task("ARC-Easy", "keyword", _keywords("answer", 5)),
    "ARC-Challenge": Task("ARC-Challenge", "keyword", _keywords("answer", 5)),
    "openbookqa": Task("openbookqa", "keyword", _keywords("answer", 5)),
}
#: Every task by its LLM-Adapters name.
TASKS: dict[str, Task] = {**_MATH, "AQuA": Task("AQuA", "letter", max_new_tokens=256), **_COMMONSENSE}

MATH_TASKS = tuple(_MATH) + ("AQuA",)
COMMONSENSE_TASKS = tuple(_COMMONSENSE)


def get_task(name: str) -> Task:
    """Look a task up by name, case-insensitively (``aqua``, ``arc-easy`` ...)."""
    by_lower = {k.lower(): t for k, t in TASKS.items()}
    task = by_lower.get(name.strip().lower())
    if task is None:
        raise ShearsError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return task


# ------------------------------------------------------------------------------------------- extraction

_NUMBER = re.compile(r"-?\d+\.?\d*")
_LETTER = re.compile(r"A|B|C|D|E")


def extract_answer(task: Task, response: str) -> Prediction:
    """The prediction LLM-Adapters reads from a generated response."""
    if task.kind == "number":
        numbers = _NUMBER.findall(response.replace(",", ""))
        return float(numbers[-1]) if numbers else math.inf
    if task.kind == "letter":
        found = _LETTER.findall(response.strip())
        return found[0] if found else ""
    found = re.findall("|".join(map(re.escape, task.keywords)), response.strip())
    return found[0] if found else ""


def is_correct(task: Task, prediction: Prediction, label: str) -> bool:
    if task.kind == "number":
        try:
            return abs(float(label) - float(prediction)) <= NUMBER_TOLERANCE
        except (TypeError, ValueError):
            return False
    return prediction != "" and str(label).strip() == prediction


# ------------------------------------------------------------------------------------------------- data


def task_test_file(task: Task, data_root: Optional[Path] = None) -> Path:
    path = (data_root or shared_data_root()) / "llm_adapters" / task.name / "test.json"
    if not path.is_file():
        raise ShearsError(
            f"test file of {task.name} not found at {path}; set SHEARS_NNCF_DATA to the folder holding llm_adapters/ "
            f"or pass {task.name}=FILE"
        )
    return path


@dataclass
class TaskSpec:
    """A task and the file its records come from; ``is_test`` marks the task's own test split."""

    task: Task
    path: Path
    is_test: bool


def parse_task_specs(text: Union[str, Sequence[str]], data_root: Optional[Path] = None) -> list[TaskSpec]:
    """Parse ``gsm8k,ARC-Easy`` or ``gsm8k=val.json``: a bare name means that task's test file."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not items:
        raise ShearsError("no task given; name at least one, e.g. gsm8k or ARC-Easy")
    specs = []
    for item in items:
        name, sep, file = item.partition("=")
        task = get_task(name)
        if sep:
            path = Path(file)
            if not path.is_file():
                raise ShearsError(f"data file {path} of task {task.name} does not exist; check the path")
            specs.append(TaskSpec(task, path, is_test=path.stem.lower().startswith("test")))
        else:
            specs.append(TaskSpec(task, task_test_file(task, data_root), is_test=True))
    return specs


def load_test_records(path: Union[str, Path], limit: Optional[int] = None) -> list[dict]:
    """Records from a JSON array (LLM-Adapters) or JSON-lines file; the first ``limit`` of them."""
    data = read_json_records(path, "data file")
    if not data or not all(isinstance(r, dict) and "instruction" in r for r in data):
        raise ShearsError(f"{path} has no records with an 'instruction' field; pass LLM-Adapters style data")
    data = data[:limit] if limit else data
    unlabelled = [i + 1 for i, r in enumerate(data) if r.get("answer") in (None, "")]
    if unlabelled:  # it would be scored wrong, not refused
        raise ShearsError(
            f"{path} record {unlabelled[0]} has no 'answer' ({len(unlabelled)} of {len(data)} records lack one); "
            "give every scored record its answer"
        )
    return data


# ------------------------------------------------------------------------------------------- generation


def make_generate_fn(model, tokenizer, max_new_tokens: int) -> GenerateFn:
    """Greedy, left-padded batched generation with any model that has a Hugging Face ``.generate``."""
    from transformers import GenerationConfig

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def generate(prompts: list[str]) -> list[str]:
        import torch

        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        try:
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = side
        if limit and enc["input_ids"].shape[1] + max_new_tokens > limit:
            raise ShearsError(
                f"a prompt of {enc['input_ids'].shape[1]} tokens + {max_new_tokens} new tokens exceeds the "
                f"model's {limit} positions; shorten the records, lower --max-new-tokens, or --limit them"
            )
        device = getattr(model, "device", "cpu")  # an OVModelForCausalLM says cpu
        with torch.no_grad():
            out = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                generation_config=gen_config,
            )
        new = out[:, enc["input_ids"].shape[1] :].cpu()
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    return generate


@dataclass
class TaskResult:
    task: str
    accuracy: float
    correct: int
    total: int
    seconds: float
    samples: list[dict] = field(default_factory=list)  # response, prediction, label, correct per record

    def to_dict(self, with_samples: bool = False) -> dict:
        d = {
            "task": self.task,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "seconds": self.seconds,
        }
        if with_samples:
            d["samples"] = self.samples
        return d


def score_task(
    task: Task, records: list[dict], generate_fn: GenerateFn, batch_size: int = 8, desc: Optional[str] = None
) -> TaskResult:
    """Generate a response to every record and score it as LLM-Adapters does."""
    if batch_size < 1:
        raise ShearsError(f"batch size must be a positive integer, got {batch_size}")
    start = time.perf_counter()
    samples = []
    bar = tqdm(total=len(records), desc=desc or task.name, unit="sample", leave=False)
    for i in range(0, len(records), batch_size):
        batch = records[i : i + batch_size]
        responses = generate_fn([format_prompt(r, with_output=False) for r in batch])
        for record, response in zip(batch, responses):
            pred = extract_answer(task, response)
            ok = is_correct(task, pred, record.get("answer", ""))
            samples.append(
                {
                    "response": response,
                    "prediction": pred if pred != math.inf else None,
                    "label": record.get("answer"),
                    "correct": ok,
                }
            )
        bar.update(len(batch))
    bar.close()
    correct = sum(s["correct"] for s in samples)
    return TaskResult(
        task.name, correct / max(len(samples), 1), correct, len(samples), time.perf_counter() - start, samples
    )
