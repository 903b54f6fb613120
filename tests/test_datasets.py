"""Instruction data: formats, the LLM-Adapters prompt, tokenization/labels and the seeded validation split."""

import json

import pytest
from tiny_models import make_tokenizer

from shears_nncf.datasets import (
    IGNORE_INDEX,
    answer_text_record,
    format_prompt,
    load_instruction_data,
    load_training_records,
    normalize_record,
    tokenize_record,
    tokenize_records,
    write_records,
)
from shears_nncf.errors import ShearsError

ADAPTERS = [
    {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"},
    {"instruction": "Add the numbers.", "input": "3 and 4", "output": "The answer is 7."},
]
GSM8K = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"}]


@pytest.fixture
def adapters_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(ADAPTERS * 10))
    return path


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GSM8K * 10) + "\n")
    return path


def test_prompts_are_the_llm_adapters_templates():
    no_input = format_prompt(ADAPTERS[0])
    assert no_input == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nIs the sky blue?\n\n### Response:\nthe correct answer is true"
    )
    with_input = format_prompt(ADAPTERS[1])
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n3 and 4\n\n### Response:\nThe answer is 7."
    )
    assert format_prompt(ADAPTERS[1], with_output=False) == with_input[: -len("The answer is 7.")]


def test_formats_normalise_to_instruction_records(adapters_file, gsm8k_file):
    a = load_training_records(str(adapters_file))
    assert a[0] == ADAPTERS[0] and a[1] == ADAPTERS[1]
    g = load_training_records(str(gsm8k_file))
    assert g[0] == {"instruction": GSM8K[0]["question"], "input": "", "output": GSM8K[0]["answer"]}


def test_real_shared_files_load(shared_dir):
    llm = shared_dir / "data" / "llm_adapters"
    boolq = load_training_records(str(llm / "boolq" / "train.json"))
    math = load_training_records(str(llm / "math_data.json"))
    gsm = load_training_records(str(shared_dir / "data" / "gsm8k" / "train.jsonl"))
    raw_math = json.loads((llm / "math_data.json").read_text())
    assert (len(boolq), len(gsm)) == (9427, 7473)
    assert len(math) == sum(1 for r in raw_math if r["output"].strip()) == 3257  # 3 records have an empty output
    raw = json.loads((llm / "boolq" / "train.json").read_text())[5]
    assert boolq[5]["instruction"] == raw["instruction"] and boolq[5]["output"] == raw["output"]


def test_tokenize_masks_the_prompt_and_appends_eos():
    tok = make_tokenizer()
    rec = ADAPTERS[1]
    out = tokenize_record(rec, tok, cutoff_len=512, train_on_inputs=False)
    full = tok(format_prompt(rec))["input_ids"]
    prompt = tok(format_prompt(rec, with_output=False))["input_ids"]
    assert out["input_ids"] == full + [tok.eos_token_id]
    assert out["attention_mask"] == [1] * len(full + [1])
    assert out["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert out["labels"][len(prompt) :] == out["input_ids"][len(prompt) :]
    assert tok.decode([t for t in out["labels"] if t != IGNORE_INDEX]) == "The answer is 7.</s>"
    trained_on_all = tokenize_record(rec, tok, cutoff_len=512, train_on_inputs=True)
    assert trained_on_all["labels"] == trained_on_all["input_ids"]


def test_cutoff_truncates_without_eos_and_drops_records_without_targets():
    tok = make_tokenizer()
    n_prompt = len(tok(format_prompt(ADAPTERS[1], with_output=False))["input_ids"])
    cut = tokenize_record(ADAPTERS[1], tok, cutoff_len=n_prompt + 2)
    assert len(cut["input_ids"]) == n_prompt + 2 and cut["input_ids"][-1] != tok.eos_token_id
    assert sum(t != IGNORE_INDEX for t in cut["labels"]) == 2
    ds = tokenize_records(ADAPTERS * 3, tok, cutoff_len=n_prompt)  # record 1's response is cut off entirely
    n0 = len(tok(format_prompt(ADAPTERS[0]))["input_ids"])
    assert n0 < n_prompt and len(ds) == 3
    with pytest.raises(ShearsError, match="cutoff_len"):
        tokenize_records([ADAPTERS[1]], tok, cutoff_len=n_prompt)


def test_validation_split_is_seeded_and_disjoint(adapters_file, gsm8k_file):
    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(50)]
    path = adapters_file.parent / "many.json"
    path.write_text(json.dumps(records))
    train, val = load_instruction_data([str(path)], val_set_size=0.2, seed=3)
    train2, val2 = load_instruction_data(str(path), val_set_size=0.2, seed=3)
    _, val3 = load_instruction_data(str(path), val_set_size=0.2, seed=4)
    assert (train, val) == (train2, val2) and val != val3
    assert len(val) == 10 and len(train) == 40
    key = lambda r: r["instruction"]  # noqa: E731
    assert sorted(map(key, train + val)) == sorted(map(key, records))
    _, val_n = load_instruction_data(str(path), val_set_size=7, seed=3)
    assert len(val_n) == 7
    pooled, _ = load_instruction_data([str(adapters_file), str(gsm8k_file)], val_set_size=0, max_train_samples=25)
    assert len(pooled) == 25 and pooled[20]["instruction"] == GSM8K[0]["question"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "is empty"),
        ("[]", "holds no records"),
        (json.dumps([{"instruction": "x", "input": ""}]), "has no 'output'"),
        (json.dumps([{"instruction": "x", "input": "", "output": " "}]), "empty output"),
        (json.dumps({"question": "x"}), "has no 'answer'"),
        (json.dumps([{"prompt": "x", "completion": "y"}]), "expected LLM-Adapters records"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_bad_data_files_fail_with_one_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ShearsError, match=match) as e:
        load_instruction_data([str(path)])
    assert "\n" not in str(e.value)


def test_missing_file_and_unreachable_hub_dataset(tmp_path, monkeypatch):
    with pytest.raises(ShearsError, match="does not exist"):
        load_instruction_data([str(tmp_path / "nope.json")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ShearsError, match="cannot load Hugging Face dataset 'someone/no-such-set'"):
        load_instruction_data(["someone/no-such-set"])
    path = tmp_path / "two.json"
    path.write_text(json.dumps(ADAPTERS))
    with pytest.raises(ShearsError, match="val_set_size 2 leaves no training records"):
        load_instruction_data([str(path)], val_set_size=2)
    with pytest.raises(ShearsError, match="no training data"):
        load_instruction_data([])


# ------------------------------------------------------------------------------------------- answer-text format

#: LLM-Adapters commonsense records as their train.json files hold them, and the lm-eval text each becomes
#: (written out by hand: "Question: {question}\nAnswer:" + " {gold choice}"; BoolQ's question gets a "?" and
#: the answer " yes" / " no")
MC = {
    "boolq": (
        {
            "instruction": "Please answer the following question with true or false, question: do iran and "
            "afghanistan speak the same language?\n\nAnswer format: true/false",
            "input": "",
            "output": "the correct answer is true",
            "answer": "true",
        },
        "Question: do iran and afghanistan speak the same language?\nAnswer:",
        " yes",
    ),
    "ARC-Easy": (
        {
            "instruction": "Please choose the correct answer to the question: Which gas do plants take in?\n\n"
            "Answer1: oxygen Answer2: carbon dioxide Answer3: helium Answer4: steam\n\n"
            "Answer format: answer1/answer2/answer3/answer4",
            "input": "",
            "output": "the correct answer is answer2",
            "answer": "answer2",
        },
        "Question: Which gas do plants take in?\nAnswer:",
        " carbon dioxide",
    ),
    "openbookqa": (
        {
            "instruction": "Please choose the correct answer to the question: A magnet attracts\n\nAnswer1: "
            "wood Answer2: iron Answer3: glass Answer4: paper\n\nAnswer format: "
            "answer1/answer2/answer3/answer4",
            "input": "",
            "output": "the correct answer is answer4",
            "answer": "answer4",
        },
        "Question: A magnet attracts\nAnswer:",
        " paper",
    ),
}


@pytest.fixture
def mc_root(tmp_path):
    """An LLM-Adapters style data folder: TASK/train.json per task, 6 copies of the task's record each."""
    for task, (record, _, _) in MC.items():
        (tmp_path / task).mkdir()
        (tmp_path / task / "train.json").write_text(json.dumps([record] * 6))
    return tmp_path


@pytest.mark.parametrize("task", sorted(MC))
def test_answer_text_record_is_the_likelihood_context_and_gold_continuation(task):
    from shears_nncf.likelihood import parse_question
    from shears_nncf.tasks import get_task

    record, context, gold = MC[task]
    rendered = answer_text_record(normalize_record(record), f"llm_adapters/{task}/train.json")
    q = parse_question(get_task(task), record)  # what eval --scoring likelihood scores for this record
    assert format_prompt(rendered) == q.contexts[q.label] + q.continuations[q.label] == context + gold
    assert format_prompt(rendered, with_output=False) == context
    # the same text from the answer keyword alone, for a file outside a TASK/ folder
    assert format_prompt(answer_text_record(normalize_record(record), "mine.json")) == context + gold


def test_answer_text_tokens_are_those_the_scorer_scores():
    from shears_nncf.likelihood import encode_pair

    tok = make_tokenizer()
    rendered = answer_text_record(normalize_record(MC["ARC-Easy"][0]), "ARC-Easy/train.json")
    out = tokenize_record(rendered, tok, cutoff_len=256)
    ctx, cont = encode_pair(tok, *MC["ARC-Easy"][1:])
    assert out["input_ids"] == ctx + cont + [tok.eos_token_id]
    assert out["labels"] == [IGNORE_INDEX] * len(ctx) + cont + [tok.eos_token_id]
    assert tok.decode(cont) == " carbon dioxide"
    cut = tokenize_record(rendered, tok, cutoff_len=len(ctx) + 1)  # truncated: one response token, no EOS
    assert cut["input_ids"] == ctx + cont[:1] and cut["labels"][-1] == cont[0]


def test_answer_text_format_splits_the_same_records_and_the_validation_file_keeps_it(mc_root, tmp_path):
    files = [str(mc_root / t / "train.json") for t in sorted(MC)]
    label_train, label_val = load_instruction_data(files, val_set_size=4, seed=1)
    train, val = load_instruction_data(files, val_set_size=4, seed=1, response_format="answer-text")
    assert [r["instruction"] for r in train + val] == [r["instruction"] for r in label_train + label_val]
    by_instruction = {r["instruction"]: ctx + gold for r, ctx, gold in MC.values()}
    assert all(format_prompt(r) == by_instruction[r["instruction"]] for r in train + val)
    # the search stage reads validation.jsonl back through normalize_record: it must score the same text
    write_records(tmp_path / "validation.jsonl", val)
    back = [normalize_record(json.loads(line)) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [format_prompt(r) for r in back] == [format_prompt(r) for r in val]
    ds = tokenize_records(train, make_tokenizer())
    assert len(ds) == len(train)


def test_answer_text_refuses_records_without_choices(gsm8k_file):
    with pytest.raises(ShearsError, match="not a multiple-choice record") as e:
        load_instruction_data([str(gsm8k_file)], response_format="answer-text")
    assert "\n" not in str(e.value)
    with pytest.raises(ShearsError, match="response format 'labels' is not one of label, answer-text"):
        load_training_records(str(gsm8k_file), "labels")


def test_training_config_declares_the_response_format():
    from shears_nncf.config import TrainingConfig

    assert TrainingConfig().response_format == "label"
    assert TrainingConfig(response_format="answer-text").response_format == "answer-text"
    with pytest.raises(ShearsError, match="response-format must be one of 'label', 'answer-text'"):
        TrainingConfig(response_format="text")
