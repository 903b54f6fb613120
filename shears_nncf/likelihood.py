"""Multiple-choice accuracy by log-likelihood, as lm-evaluation-harness scores it: no answer format to learn.

Generation with answer extraction (:mod:`shears_nncf.tasks`) gives a small or briefly tuned model almost no
signal: it must first learn to write "the correct answer is answer2". Scoring every choice by the model's own
log-probability measures what it knows without that: ``acc`` picks the choice with the highest summed
log-likelihood of its tokens after the question, ``acc_norm`` the highest per character of the choice (lm-eval's
length normalisation; for WinoGrande, whose continuations are alike, the same as ``acc``). The question and the
choices are parsed out of the LLM-Adapters instruction of each record, and each task is phrased as lm-eval phrases it:

* ARC, OpenBookQA, PIQA, Social IQa: ``"Question: {question}\\nAnswer:"`` + ``" {choice}"``;
* BoolQ: the same with the choices ``" yes"`` / ``" no"`` (LLM-Adapters' records carry no passage);
* WinoGrande: lm-eval's partial scoring, the blank filled with each option as the context and the rest of the
  sentence as the one continuation scored.

A continuation is scored on the tokens of ``context + continuation`` past those of ``context`` (lm-eval's
``_encode_pair``, no special tokens). ``tests/test_likelihood.py`` checks every log-likelihood against
lm-evaluation-harness's own ``HFLM`` on the same requests.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from .errors import ShearsError
from .tasks import Task

#: Scores (context, continuation) pairs: their summed log-likelihoods, in order.
LoglikFn = Callable[[Sequence[tuple[str, str]]], list[float]]

_LEAD = re.compile(r"(?:question|sentence): ", re.IGNORECASE)
_CHOICE = re.compile(r"\s*(?:Answer|Solution|Option)(\d+): ")
_FORMAT = re.compile(r"\s*Answer format:.*$", re.DOTALL)
_BOOLQ = {"true": " yes", "false": " no"}
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as scored: a context per choice (one for all but WinoGrande) and continuations."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    label: int


def parse_question(task: Task, record: dict) -> Question:
    """The question, choices and label index of an LLM-Adapters multiple-choice record."""
    if task.kind != "keyword":
        raise ShearsError(
            f"{task.name} is not a multiple-choice task; likelihood scoring takes "
            "boolq, piqa, social_i_qa, winogrande, ARC-Easy, ARC-Challenge or openbookqa"
        )
    text = _FORMAT.sub("", record.get("instruction", "")).strip()
    lead = _LEAD.search(text)
    if lead is None:
        raise ShearsError(
            f"{task.name} record {record.get('instruction', '')[:60]!r} is not in the LLM-Adapters format "
            "('... question: ...'); score it with --scoring generate"
        )
    parts = _CHOICE.split(text[lead.end() :])
    question, choices = parts[0].strip(), tuple(p.strip() for p in parts[2::2])
    answer = str(record.get("answer", "")).strip()
    if task.name == "boolq":
        choices = ("true", "false")
    if answer not in task.keywords[: len(choices)] or len(choices) < 2:
        raise ShearsError(
            f"{task.name} record {question[:60]!r}: cannot match the answer {answer!r} to its "
            f"{len(choices)} choices; check the test file"
        )
    label = task.keywords.index(answer)
    if task.name == "boolq":
        # lm-eval's "{question}?": LLM-Adapters' BoolQ questions end in "?" already, lm-eval's (BoolQ's own) do not
        context = f"Question: {question.rstrip('?').rstrip()}?\nAnswer:"
        return Question((context,) * 2, tuple(_BOOLQ[c] for c in choices), label)
    if task.name == "winogrande":
        blank = question.index("_") if "_" in question else None
        if blank is None:
            raise ShearsError(f"winogrande record {question[:60]!r} has no blank '_'; check the test file")
        rest = " " + question[blank + 1 :].strip()
        return Question(tuple(question[:blank] + c for c in choices), (rest,) * len(choices), label)
    context = f"Question: {question}\nAnswer:"
    return Question((context,) * len(choices), tuple(" " + c for c in choices), label)


# ------------------------------------------------------------------------------------------- scoring


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the continuation, split as lm-eval splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # a trailing space belongs to the continuation, where BPE tokenizers put it
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx) :]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _pack_rows(
    encoded: list[tuple[list[int], list[int]]], max_tokens: int
) -> list[list[tuple[list[int], list[tuple[int, list[int]]]]]]:
    """Pairs grouped by shared context (consecutive, as a question's choices come), groups packed into rows."""
    groups: list[tuple[list[int], list[tuple[int, list[int]]]]] = []
    for i, (ctx, cont) in enumerate(encoded):
        if groups and groups[-1][0] == ctx:
            groups[-1][1].append((i, cont))
        else:
            groups.append((ctx, [(i, cont)]))
    rows, row, used = [], [], 0
    for ctx, conts in groups:
        size = len(ctx) + sum(len(c) - 1 for _, c in conts)
        if row and used + size > max_tokens:
            rows.append(row)
            row, used = [], 0
        row.append((ctx, conts))
        used += size
    return rows + ([row] if row else [])


def torch_loglik_fn(model, tokenizer, max_tokens: int = 512) -> LoglikFn:
    """Summed continuation log-likelihoods from a torch model (or PeftModel), each context run once for all its choices.

    A question's context is followed by every choice's tokens in one sequence, each choice attending to the context
    and to itself only (a tree mask, positions restarting after the context), and several questions share a row of
    up to ``max_tokens`` tokens with a block-diagonal mask: no padding, no context recomputed per choice, logits
    only where a choice token is predicted. The same numbers as scoring each ``context + choice`` on its own
    (``tests/test_likelihood.py`` checks them against lm-evaluation-harness), and much faster on a CPU.
    """
    import torch

    device = getattr(model, "device", "cpu")
    dtype = next(model.parameters()).dtype
    eos = tokenizer.eos_token_id

    def run_row(row, out: list[float]) -> None:
        ids: list[int] = []
        pos: list[int] = []
        blocks = []  # (rows, columns) of the mask each token may see, causally
        targets = []  # (pair index, positions predicting its tokens, its tokens)
        for ctx, conts in row:
            ctx = ctx or [eos]  # lm-eval's convention for an empty context
            base = len(ids)
            ids += ctx
            pos += range(len(ctx))
            blocks.append((slice(base, base + len(ctx)), [slice(base, base + len(ctx))]))
            for i, cont in conts:
                start = len(ids)
                ids += cont[:-1]
                pos += range(len(ctx), len(ctx) + len(cont) - 1)
                here = slice(start, start + len(cont) - 1)
                blocks.append((here, [slice(base, base + len(ctx)), here]))  # its context, then itself
                # token j of the choice is predicted at the context's last position (j = 0), else at token j - 1's
                targets.append((i, [base + len(ctx) - 1, *range(start, start + len(cont) - 1)], cont))
        n = len(ids)
        causal = torch.ones((n, n), dtype=torch.bool).tril()
        allowed = torch.zeros((n, n), dtype=torch.bool)
        for rows, columns in blocks:
            for cols in columns:
                allowed[rows, cols] = causal[rows, cols]
        mask = torch.zeros((1, 1, n, n), dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        keep = sorted({p for _, ps, _ in targets for p in ps})
        where = {p: k for k, p in enumerate(keep)}
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([ids], device=device),
                position_ids=torch.tensor([pos], device=device),
                attention_mask=mask.to(device),
                logits_to_keep=torch.tensor(keep, device=device),
            ).logits
            logp = torch.log_softmax(logits[0].float(), -1).cpu()
        for i, ps, cont in targets:
            out[i] = float(logp[[where[p] for p in ps], cont].sum())

    def score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
        out = [0.0] * len(encoded)
        for row in _pack_rows(encoded, max_tokens):
            run_row(row, out)
        return out

    return score


def ir_loglik_fn(request, tokenizer) -> LoglikFn:
    """Summed continuation log-likelihoods from a stateful OpenVINO IR's infer request, one sequence at a time."""
    from .ir import ir_inputs

    def score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for context, continuation in pairs:
            ctx, cont = encode_pair(tokenizer, context, continuation)
            request.reset_state()
            logits = np.asarray(request.infer(ir_inputs(np.array([(ctx + cont)[:-1]])))["logits"])[0]
            logp = _log_softmax(logits[len(ctx) - 1 :].astype(np.float64))
            out.append(float(logp[np.arange(len(cont)), cont].sum()))
        return out

    return score


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (right at 0 and 1, unlike the normal approximation)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class LikelihoodResult:
    task: str
    acc: float
    acc_norm: float
    correct: int
    correct_norm: int
    total: int
    seconds: float
    samples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        stderr = lambda p: math.sqrt(p * (1 - p) / max(self.total - 1, 1))  # noqa: E731  lm-eval's sample stderr
        return {
            "task": self.task,
            "scoring": "likelihood",
            "acc": self.acc,
            "acc_norm": self.acc_norm,
            "acc_stderr": stderr(self.acc),
            "acc_norm_stderr": stderr(self.acc_norm),
            "acc_ci95": wilson_interval(self.correct, self.total),
            "acc_norm_ci95": wilson_interval(self.correct_norm, self.total),
            "correct": self.correct,
            "total": self.total,
            "seconds": self.seconds,
        }


def score_likelihood(task: Task, records: list[dict], loglik: LoglikFn, chunk: int = 32) -> LikelihoodResult:
    """Score every record's choices with ``loglik``; acc and acc_norm over the records."""
    questions = [parse_question(task, r) for r in records]  # every record parsed before any scoring
    start = time.perf_counter()
    samples = []
    bar = tqdm(total=len(questions), desc=f"{task.name} (likelihood)", unit="question", leave=False)
    for i in range(0, len(questions), chunk):
        batch = questions[i : i + chunk]
        pairs = [(c, x) for q in batch for c, x in zip(q.contexts, q.continuations)]
        lls = iter(loglik(pairs))
        for q in batch:
            ll = [next(lls) for _ in q.continuations]
            # lm-eval divides by the length of the choice string, its target delimiter (the space) not counted
            norm = [v / max(len(x.lstrip()), 1) for v, x in zip(ll, q.continuations)]
            samples.append(
                {
                    "loglikelihoods": ll,
                    "label": q.label,
                    "prediction": int(np.argmax(ll)),
                    "prediction_norm": int(np.argmax(norm)),
                }
            )
        bar.update(len(batch))
    bar.close()
    correct = sum(s["prediction"] == s["label"] for s in samples)
    correct_norm = sum(s["prediction_norm"] == s["label"] for s in samples)
    n = max(len(samples), 1)
    return LikelihoodResult(
        task.name,
        correct / n,
        correct_norm / n,
        correct,
        correct_norm,
        len(samples),
        time.perf_counter() - start,
        samples,
    )
