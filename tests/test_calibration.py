"""Calibration windows, NNCF datasets and perplexity, checked against direct tokenizer / model computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import CORPUS, make_model, make_tokenizer

from shears_nncf import calibration
from shears_nncf.calibration import as_nncf_dataset, calibration_windows, load_texts
from shears_nncf.errors import ShearsError
from shears_nncf.perplexity import perplexity


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def stream(tok, texts):
    return tok("\n\n".join(texts), add_special_tokens=False)["input_ids"]


def test_windows_are_distinct_slices_of_the_joined_documents(tok, tmp_path):
    texts = [f"Document {i}: {i * 7919 % 1000} apples and {i * 104729 % 997} pears." for i in range(60)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ids = torch.tensor(stream(tok, texts))
    w = calibration_windows(tok, path, nsamples=10, seqlen=32, seed=1)
    assert w.shape == (10, 32) and w.dtype == torch.long
    starts = []
    for row in w:
        hits = [s for s in range(ids.numel() - 31) if torch.equal(ids[s : s + 32], row)]
        assert len(hits) == 1, "a window is not a (unique) slice of the token stream"
        starts.append(hits[0])
    starts.sort()
    assert all(b - a >= 32 for a, b in zip(starts, starts[1:])), "windows overlap"
    assert len({s % 32 for s in starts}) == 1  # one random offset, then whole slots


def test_windows_deterministic_per_seed(tok, calib_file):
    a = calibration_windows(tok, calib_file, 6, 16, seed=0)
    assert torch.equal(a, calibration_windows(tok, calib_file, 6, 16, seed=0))
    assert not torch.equal(a, calibration_windows(tok, calib_file, 6, 16, seed=1))


def test_too_short_source_names_its_token_count(tok):
    texts = ["one two three four five six seven"]
    n = len(stream(tok, texts))
    with pytest.raises(ShearsError, match=rf"has {n} tokens, fewer than nsamples x seqlen = 2 x {n} = {2 * n}"):
        calibration_windows(tok, texts, 2, n)
    assert calibration_windows(tok, texts, 1, n).shape == (1, n)  # exactly enough


def test_file_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "first doc"}\n\n{"text": "second doc", "meta": 1}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "x y"}, "plain string"]))
    (tmp_path / "c.txt").write_text("line one\nline two\n")
    assert load_texts(tmp_path / "a.jsonl") == ["first doc", "second doc"]
    assert load_texts(str(tmp_path / "b.json")) == ["x y", "plain string"]
    assert load_texts(tmp_path / "c.txt") == ["line one\nline two\n"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(ShearsError, match=r"record 2 has no string 'text' field \(found: body\)"):
        load_texts(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(ShearsError, match="line 2 is not JSON"):
        load_texts(tmp_path / "broken.jsonl")
    with pytest.raises(ShearsError, match="is not a readable file"):
        load_texts(tmp_path / "missing.json")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ShearsError, match="contains no text"):
        load_texts(tmp_path / "empty.jsonl")


def test_training_records_calibrate_on_the_text_the_model_is_tuned_on(tmp_path):
    """A training file (LLM-Adapters / GSM8K records) is a calibration source: each record counts as the prompt and
    response the trainer tokenizes, so the W8A8 ranges come from the task the model is deployed for."""
    from shears_nncf.datasets import tokenize_record

    tok = make_tokenizer()
    arc = [
        {
            "instruction": "Pick the answer: what is wet?",
            "input": "",
            "output": "the correct answer is water",
            "answer": "water",
        },
        {"instruction": "Add", "input": "2 and 3", "output": "5"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(arc))
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "How many?", "answer": "Two.\n#### 2"}) + "\n")
    texts = load_texts(tmp_path / "train.json")
    assert texts[0] == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nPick the answer: what is wet?\n\n### Response:\nthe correct answer is water"
    )
    assert "### Input:\n2 and 3" in texts[1]
    for text, record in zip(texts, arc):  # the same tokens as training sees, but for its special tokens
        trained = tokenize_record(record, tok, cutoff_len=10_000, add_eos=False)["input_ids"]
        assert tok(text, add_special_tokens=False)["input_ids"] == [t for t in trained if t not in tok.all_special_ids]
    assert load_texts(tmp_path / "gsm.jsonl")[0].rstrip().endswith("### Response:\nTwo.\n#### 2")
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": " ", "output": "x"}]))
    with pytest.raises(ShearsError, match="record 1 has an empty instruction"):
        load_texts(tmp_path / "bad.json")


def test_dataset_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        ShearsError, match="cannot load calibration source 'no-such-org/no-such-data' as a Hugging Face dataset"
    ):
        load_texts("no-such-org/no-such-data")


def test_default_source(monkeypatch, shared_dir):
    assert calibration.default_calibration_source() == str(shared_dir / "data" / "calibration" / "c4_sample.json")
    monkeypatch.setattr(calibration, "shared_data_file", lambda rel: None)
    with pytest.raises(ShearsError, match="pass --calibration"):
        calibration.default_calibration_source()


def test_shears_nncf_data_moves_every_default_data_file(monkeypatch, tmp_path):
    """One variable relocates the calibration text, the perplexity text and the test sets (e.g. on a GPU box)."""
    from shears_nncf.perplexity import wikitext2_test_file
    from shears_nncf.tasks import parse_task_specs

    for rel in ("calibration/c4_sample.json", "calibration/wikitext2_test.json", "llm_adapters/boolq/test.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    monkeypatch.setenv("SHEARS_NNCF_DATA", str(tmp_path))
    assert calibration.default_calibration_source() == str(tmp_path / "calibration" / "c4_sample.json")
    assert wikitext2_test_file() == tmp_path / "calibration" / "wikitext2_test.json"
    assert parse_task_specs("boolq")[0].path == tmp_path / "llm_adapters" / "boolq" / "test.json"
    monkeypatch.setenv("SHEARS_NNCF_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ShearsError, match="pass --calibration"):
        calibration.default_calibration_source()


def test_shared_c4_sample(tok, shared_dir):
    w = calibration_windows(tok, calibration.default_calibration_source(), 4, 64, seed=0)
    assert w.shape == (4, 64) and int(w.max()) < len(tok)


def test_as_nncf_dataset(tok):
    import nncf

    ds = as_nncf_dataset(tok, CORPUS * 10, nsamples=5, seqlen=16, seed=2, batch_size=2)
    assert isinstance(ds, nncf.Dataset)
    items = list(ds.get_inference_data())
    windows = calibration_windows(tok, CORPUS * 10, 5, 16, seed=2)
    assert [i["input_ids"].shape[0] for i in items] == [2, 2, 1]
    assert torch.equal(torch.cat([i["input_ids"] for i in items]), windows)
    assert all(torch.equal(i["attention_mask"], torch.ones_like(i["input_ids"])) for i in items)
    custom = as_nncf_dataset(tok, CORPUS * 10, 5, 16, seed=2, transform_fn=lambda ids: ids.numpy())
    assert [x.shape for x in custom.get_inference_data()] == [(1, 16)] * 5


# ------------------------------------------------------------------------------------------------ perplexity


def reference_ppl(model, ids, seqlen, n):
    """Hugging Face's own loss (mean over the predicted tokens of each window), averaged over windows."""
    losses = [
        model(ids[None, i * seqlen : (i + 1) * seqlen], labels=ids[None, i * seqlen : (i + 1) * seqlen]).loss
        for i in range(n)
    ]
    return math.exp(torch.stack(losses).mean().item())


def test_perplexity_matches_the_model_loss(tmp_path):
    model, tok = make_model("llama")
    texts = CORPUS * 2
    joined = "\n\n".join(texts)
    ids = torch.tensor(tok(joined)["input_ids"])
    seqlen = 24
    with torch.no_grad():
        expected = reference_ppl(model, ids, seqlen, ids.numel() // seqlen)
        expected3 = reference_ppl(model, ids, seqlen, 3)
    assert perplexity(model, tok, joined, seqlen) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, tok, texts, seqlen, batch_size=4) == pytest.approx(expected, rel=1e-5)
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    assert perplexity(model, tok, path, seqlen, max_windows=3) == pytest.approx(expected3, rel=1e-5)
    assert 1 < expected < len(tok) * 3  # a random model is about as uncertain as the vocabulary


def test_perplexity_needs_one_window():
    model, tok = make_model("llama")
    with pytest.raises(ShearsError, match="fewer than one window"):
        perplexity(model, tok, "too short", seqlen=64)
