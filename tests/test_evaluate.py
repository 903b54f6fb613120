"""Task evaluation of a torch model (+ PEFT adapter) or an OpenVINO IR, checked against one-by-one generation."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from report_shapes import assert_report_shape
from transformers import AutoModelForCausalLM, AutoTokenizer

from shears_nncf.cli import main
from shears_nncf.config import EvalConfig
from shears_nncf.datasets import format_prompt
from shears_nncf.evaluation import evaluate
from shears_nncf.reports import EvalReport

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def lively_llama(tmp_path_factory) -> Path:
    """A tiny Llama with large random weights, so that greedy outputs vary and contain digits."""
    from tiny_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("lively") / "llama", "llama", initializer_range=1.0)


def _greedy_one_by_one(model_dir, records, adapter=None):
    """Independent reference: plain HF generate, one unpadded prompt at a time."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    out = []
    for r in records:
        ids = tok(format_prompt(r, with_output=False), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.eos_token_id,
            )
        out.append(tok.decode(seq[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def _last_number(text):
    nums = re.findall(r"-?\d+\.?\d*", text.replace(",", ""))
    return float(nums[-1]) if nums else None


@pytest.fixture(scope="module")
def math_file(lively_llama, tmp_path_factory):
    """Records whose labels are right for the even ones where the model writes a number, wrong elsewhere."""
    records = [
        {"instruction": f"Question: what is {i} plus {2 * i + 1}? Answer:", "input": "", "output": ""} for i in range(7)
    ]
    responses = _greedy_one_by_one(lively_llama, records)
    expected = 0
    for i, (r, resp) in enumerate(zip(records, responses)):
        num = _last_number(resp)
        if i % 2 == 0 and num is not None:
            r["answer"] = str(num)
            expected += 1
        else:
            r["answer"] = "-123456.5"
    assert expected >= 1, "the lively model should write at least one number"
    path = tmp_path_factory.mktemp("data") / "arith.json"
    path.write_text(json.dumps(records))
    return path, expected / len(records), responses


def test_accuracy_matches_one_by_one_generation(lively_llama, math_file, tmp_path):
    path, expected, responses = math_file
    out = tmp_path / "res" / "eval.json"
    res = evaluate(
        str(lively_llama), EvalConfig(tasks=[f"SingleEq={path}"], batch_size=3, max_new_tokens=NEW_TOKENS), output=out
    )
    r = res["tasks"]["SingleEq"]
    assert r["accuracy"] == pytest.approx(expected) and r["total"] == 7 and r["test_set"] is False
    saved = json.loads(out.read_text())
    assert [s["response"] for s in saved["samples"]["SingleEq"]] == responses  # batched + left-padded == one by one
    assert saved["tasks"] == res["tasks"]
    assert_report_shape(res, EvalReport)


def test_limit_keeps_the_first_samples(lively_llama, math_file):
    path, _, responses = math_file
    res = evaluate(str(lively_llama), EvalConfig(tasks=[f"SingleEq={path}"], limit=2, max_new_tokens=NEW_TOKENS))
    num = _last_number(responses[0])
    assert res["tasks"]["SingleEq"]["total"] == 2
    assert res["tasks"]["SingleEq"]["correct"] == (1 if num is not None else 0)


def test_cli_eval_with_an_adapter_prints_a_table(lively_llama, math_file, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(lively_llama)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    path, _, _ = math_file
    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--model",
            str(lively_llama),
            "--adapter",
            str(tmp_path / "adapter"),
            "--tasks",
            f"SingleEq={path}",
            "--limit",
            "3",
            "--max-new-tokens",
            str(NEW_TOKENS),
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "SingleEq" in table and "accuracy" in table
    saved = json.loads(out.read_text())
    records = json.loads(path.read_text())[:3]
    assert [s["response"] for s in saved["samples"]["SingleEq"]] == _greedy_one_by_one(
        lively_llama, records, tmp_path / "adapter"
    )
    assert saved["adapter"] == str(tmp_path / "adapter")


def test_shared_test_file_and_wikitext2(tiny_llama, shared_dir):
    res = evaluate(str(tiny_llama), EvalConfig(tasks="boolq,wikitext2", limit=2, max_new_tokens=4))
    assert res["tasks"]["boolq"]["test_set"] is True and res["tasks"]["boolq"]["total"] == 2
    ppl = res["tasks"]["wikitext2"]["perplexity"]
    assert math.isfinite(ppl) and ppl > 1 and res["tasks"]["wikitext2"]["windows"] == 2


def test_ir_evaluation_generates_as_the_torch_model(lively_llama, math_file, tmp_path):
    from shears_nncf.config import ExportConfig
    from shears_nncf.exporting import export

    export(str(lively_llama), tmp_path / "ir", config=ExportConfig(quantize="none"))
    path, _, responses = math_file
    out = tmp_path / "ir_eval.json"
    cfg = EvalConfig(
        tasks=[f"SingleEq={path}"], limit=4, batch_size=2, max_new_tokens=NEW_TOKENS, precision="f32"
    )  # parity needs f32: AMX CPUs default to bf16
    res = evaluate(str(lively_llama), cfg, ir=str(tmp_path / "ir"), output=out)
    assert res["ir"] == str(tmp_path / "ir") and res["inference_precision"] == "f32"
    assert [s["response"] for s in json.loads(out.read_text())["samples"]["SingleEq"]] == responses[:4]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "hellaswag"], "unknown task 'hellaswag'"),
        (["--tasks", "gsm8k", "--limit", "0"], "--limit must be a positive integer"),
        (["--tasks", "boolq=/nonexistent/file.json"], "does not exist"),
        (["--tasks", "gsm8k", "--ir", "/nonexistent_ir"], "has no openvino_model.xml"),
        (["--tasks", "wikitext2", "--ir", "/nonexistent_ir"], "torch model only"),
        (
            ["--tasks", "gsm8k", "--ir", "IR", "--precision", "fp8"],
            "--precision must be one of 'f32', 'bf16', 'default', got 'fp8'",
        ),
        (["--tasks", "gsm8k", "--device", "cuda:99"], "device 'cuda:99' is not available"),
        (["--tasks", "gsm8k", "--device", "gpu-zero"], "unknown device 'gpu-zero'"),
    ],
)
def test_cli_eval_bad_input(args, message, tiny_llama, tmp_path, capsys, shared_dir):
    rc = main(["eval", "--model", str(tiny_llama), *args, "--output", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.json").exists()
