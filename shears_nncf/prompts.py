"""The prompt a record is trained and scored with: LLM-Adapters' Alpaca template, or an answer-text record's plain
context. Written once, for training (:mod:`shears_nncf.datasets`), generation scoring (:mod:`shears_nncf.tasks`),
calibration and the model cards."""

from __future__ import annotations

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n{output}"
)
#: the key of a record rendered as a plain context (answer-text): the prompt, without the Alpaca template
CONTEXT_KEY = "context"


def format_prompt(record: dict, with_output: bool = True) -> str:
    """The LLM-Adapters Alpaca-style prompt; ``with_output=False`` gives the generation prompt.

    An answer-text record (:func:`shears_nncf.datasets.answer_text_record`) is its plain ``context`` followed by its
    ``output``.
    """
    if CONTEXT_KEY in record and record.get("response_format") == "answer-text":
        return record[CONTEXT_KEY] + (record["output"] if with_output else "")
    template = PROMPT_WITH_INPUT if record.get("input") else PROMPT_NO_INPUT
    return template.format(
        instruction=record["instruction"],
        input=record.get("input") or "",
        output=record["output"] if with_output else "",
    )
