"""Instruction data: formats, the LLM-Adapters prompt, tokenization/labels and the seeded validation split."""
import json

import pytest
from tiny_models import make_tokenizer

from shears_nncf.datasets import (
    IGNORE_INDEX,
    format_prompt,
    load_instruction_data,
    load_training_records,
    tokenize_record,
    tokenize_records,
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
    assert out["labels"][len(prompt):] == out["input_ids"][len(prompt):]
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
