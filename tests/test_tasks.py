"""LLM-Adapters task definitions: answer extraction as their evaluate scripts score it, data loading, generation."""

import json
import math

import pytest
import torch

from shears_nncf.datasets import format_prompt
from shears_nncf.errors import ShearsError
from shears_nncf.tasks import (
    COMMONSENSE_TASKS,
    MATH_TASKS,
    TASKS,
    extract_answer,
    get_task,
    is_correct,
    load_test_records,
    make_generate_fn,
    parse_task_specs,
    score_task,
)

# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize("name", ["gsm8k", "mawps", "SVAMP", "AddSub", "MultiArith", "SingleEq"])
@pytest.mark.parametrize(
    "response, expected",
    [
        ("She has 3 + 4 = 7 apples. The answer is 7.", 7.0),  # the last number, not the first
        ("He pays $1,234.50 in total.", 1234.5),  # thousands separators are dropped
        ("The temperature fell to -12 degrees", -12.0),
        ("42. Next question: how many are 3 and 5?", 5.0),  # a rambling continuation wins (LLM-Adapters' rule)
        ("I do not know.", math.inf),
    ],
)
def test_arithmetic_answer_is_the_last_number(name, response, expected):
    assert extract_answer(get_task(name), response) == expected


def test_arithmetic_answers_are_right_within_1e_3():
    task = get_task("gsm8k")
    assert is_correct(task, 576.0, "576.0")
    assert is_correct(task, 576.0009, "576")
    assert not is_correct(task, 576.01, "576.0")
    assert not is_correct(task, math.inf, "576.0")
    assert is_correct(get_task("mawps"), 1.8333, "1.8333333333333335")


@pytest.mark.parametrize(
    "response, expected",
    [
        ("The total is 12, so the answer is (D).", "D"),
        ("the answer is option c, i.e. (C)", "C"),
        ("After dividing we get (B).", "A"),  # LLM-Adapters takes the first capital A-E anywhere
        ("no idea", ""),
    ],
)
def test_aqua_answer_is_the_first_option_letter(response, expected):
    task = get_task("AQuA")
    assert extract_answer(task, response) == expected
    assert is_correct(task, extract_answer(task, response), "D") == (expected == "D")


@pytest.mark.parametrize(
    "task, response, expected",
    [
        ("boolq", "the correct answer is false", "false"),
        ("boolq", "The correct answer is True", ""),  # case-sensitive, as in LLM-Adapters
        ("boolq", "true, or rather false", "true"),  # the first keyword
        ("piqa", "the correct answer is solution2", "solution2"),
        ("social_i_qa", "the correct answer is answer3", "answer3"),
        ("winogrande", "the correct answer is option1", "option1"),
        ("ARC-Easy", "answer4 (not answer1)", "answer4"),
        ("ARC-Challenge", "the correct answer is answer5", "answer5"),
        ("openbookqa", "the correct answer is answer2", "answer2"),
        ("piqa", "the correct answer is answer2", ""),  # another task's keyword does not count
        ("winogrande", "nothing here", ""),
    ],
)
def test_commonsense_answer_is_the_first_keyword(task, response, expected):
    t = get_task(task)
    assert extract_answer(t, response) == expected
    label = expected or t.keywords[0]
    assert is_correct(t, extract_answer(t, response), label) == bool(expected)


def test_task_table_and_lookup():
    assert set(MATH_TASKS) | set(COMMONSENSE_TASKS) == set(TASKS)
    assert get_task("aqua").name == "AQuA" and get_task("ARC-easy").name == "ARC-Easy"
    assert get_task("gsm8k").max_new_tokens == 256 and get_task("boolq").max_new_tokens == 32
    with pytest.raises(ShearsError, match="unknown task 'hellaswag'"):
        get_task("hellaswag")


# ------------------------------------------------------------------------------------------------ data


def test_every_shared_test_file_reads_and_its_labels_parse(shared_dir):
    for spec in parse_task_specs(",".join(TASKS), data_root=shared_dir / "data"):
        assert spec.is_test and spec.path.name == "test.json"
        records = load_test_records(spec.path, limit=20)
        assert len(records) == 20
        for r in records:  # the gold output of the file scores as correct with our extraction
            if spec.task.kind == "number":
                float(r["answer"])
            else:
                assert r["answer"] in (spec.task.keywords or "ABCDE")


def test_gold_outputs_score_correct(shared_dir):
    """LLM-Adapters' own reference outputs, read with our rules, mostly match their labels."""
    for name in ("boolq", "piqa", "winogrande", "ARC-Easy", "AddSub", "MultiArith"):
        task = get_task(name)
        records = load_test_records(shared_dir / "data" / "llm_adapters" / name / "test.json", limit=50)
        ok = [is_correct(task, extract_answer(task, r["output"]), r["answer"]) for r in records]
        assert sum(ok) >= 0.9 * len(ok), name


def test_task_specs(tmp_path, shared_dir):
    val = tmp_path / "val.json"
    val.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a", "answer": "true"}]))
    (spec,) = parse_task_specs(f"BoolQ={val}")
    assert spec.task.name == "boolq" and spec.path == val and not spec.is_test
    with pytest.raises(ShearsError, match="does not exist"):
        parse_task_specs(f"boolq={tmp_path / 'missing.json'}")
    with pytest.raises(ShearsError, match="no task given"):
        parse_task_specs(" , ")
    with pytest.raises(ShearsError, match="not found"):
        parse_task_specs("gsm8k", data_root=tmp_path)


def test_load_records_json_and_jsonl(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": "o", "answer": "1"} for i in range(5)]
    a, b = tmp_path / "a.json", tmp_path / "b.jsonl"
    a.write_text(json.dumps(rows))
    b.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_test_records(a) == rows and load_test_records(b, limit=2) == rows[:2]
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ShearsError, match="is not valid JSON"):
        load_test_records(bad)


# ------------------------------------------------------------------------------------------- scoring


def test_score_task_counts_with_a_scripted_generator():
    task = get_task("SingleEq")
    records = [
        {"instruction": f"What is {i} + {i}?", "input": "", "output": "", "answer": str(2 * i)} for i in range(7)
    ]
    seen_prompts = []

    def generate(prompts):  # right for even i, wrong for odd i
        seen_prompts.extend(prompts)
        out = []
        for p in prompts:
            i = int(p.split("What is ")[1].split(" ")[0])
            out.append(f"So the answer is {2 * i if i % 2 == 0 else 2 * i + 1}.")
        return out

    res = score_task(task, records, generate, batch_size=3)
    assert (res.correct, res.total) == (4, 7) and res.accuracy == pytest.approx(4 / 7)
    assert seen_prompts == [format_prompt(r, with_output=False) for r in records]
    assert [s["correct"] for s in res.samples] == [i % 2 == 0 for i in range(7)]


def test_batched_left_padded_generation_equals_one_by_one():
    from tiny_models import make_model

    torch.manual_seed(0)
    model, tok = make_model("llama")
    generate = make_generate_fn(model, tok, max_new_tokens=6)
    prompts = ["What is 12 plus 30?", "The quick brown fox jumps over the lazy dog. Question: what is 1?", "Solve."]
    batched = generate(prompts)
    single = [generate([p])[0] for p in prompts]
    assert batched == single
    assert tok.padding_side == "right"  # restored after generation
    ids = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert single[0] == tok.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
