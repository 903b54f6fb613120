"""What the task files call: the LLM-Adapters test set of a task, each record parsed by
:func:`shears_nncf.likelihood.parse_question`, in the form lm-eval's multiple-choice tasks take.

Every task but WinoGrande has one context and its choices (lm-eval joins them with the target delimiter " ");
WinoGrande is lm-eval's partial scoring: one context per choice (the blank filled) and one continuation.
"""

from __future__ import annotations

import datasets

from shears_nncf.likelihood import parse_question
from shears_nncf.tasks import get_task, load_test_records, task_test_file


def load(task: str, **_metadata) -> dict:
    """``{"test": Dataset}`` of ``task``'s test file in the data folder ($SHEARS_NNCF_DATA)."""
    spec = get_task(task)
    rows = []
    for record in load_test_records(task_test_file(spec)):
        q = parse_question(spec, record)
        rows.append(
            {
                "contexts": list(q.contexts),
                "continuations": [c.removeprefix(" ") for c in q.continuations],
                "label": q.label,
                "several_contexts": len(set(q.contexts)) > 1 or task == "winogrande",
            }
        )
    return {"test": datasets.Dataset.from_list(rows)}


def doc_to_text(doc: dict):
    """The context; for WinoGrande (several contexts) the index of the right one, as lm-eval's winogrande does."""
    return doc["label"] if doc["several_contexts"] else doc["contexts"][0]


def doc_to_choice(doc: dict) -> list[str]:
    return doc["contexts"] if doc["several_contexts"] else doc["continuations"]


def doc_to_target(doc: dict):
    return doc["continuations"][0] if doc["several_contexts"] else doc["label"]
