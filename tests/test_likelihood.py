"""Likelihood scoring of multiple-choice tasks, checked against lm-evaluation-harness on the same requests."""

import json

import numpy as np
import pytest
import torch
from tiny_models import make_model

from shears_nncf.cli import main
from shears_nncf.config import ExportConfig
from shears_nncf.errors import ShearsError
from shears_nncf.likelihood import encode_pair, parse_question, score_likelihood, torch_loglik_fn, wilson_interval
from shears_nncf.tasks import get_task

# records in the LLM-Adapters format, one per task family
RECORDS = {
    "ARC-Easy": {
        "instruction": "Please choose the correct answer to the question: Which gas do plants take in?\n\n"
        "Answer1: oxygen Answer2: carbon dioxide Answer3: helium Answer4: steam\n\n"
        "Answer format: answer1/answer2/answer3/answer4",
        "answer": "answer2",
    },
    "piqa": {
        "instruction": "Please choose the correct solution to the question: How do I dry a wet towel?\n\n"
        "Solution1: Hang it in the sun.\n\nSolution2: Put it in the freezer.\n\nAnswer format: solution1/solution2",
        "answer": "solution1",
    },
    "social_i_qa": {
        "instruction": "Please choose the correct answer to the question: Tracy lost her keys. What does "
        "Tracy need to do?\n\nAnswer1: look for them Answer2: sing Answer3: sleep\n\n"
        "Answer format: answer1/answer2/answer3",
        "answer": "answer1",
    },
    "winogrande": {
        "instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
        "Sarah was a better surgeon than Maria so _ always got the easier cases.\n\nOption1: Sarah Option2: "
        "Maria Answer format: option1/option2",
        "answer": "option2",
    },
    "boolq": {
        "instruction": "Please answer the following question with true or false, question: is the sky blue on a "
        "clear day\n\nAnswer format: true/false",
        "answer": "true",
    },
    "openbookqa": {
        "instruction": "Please choose the correct answer to the question: A magnet attracts\n\nAnswer1: wood "
        "Answer2: iron Answer3: glass Answer4: paper\n\nAnswer format: answer1/answer2/answer3/answer4",
        "answer": "answer2",
    },
}


def test_questions_are_parsed_as_lm_eval_phrases_them():
    q = parse_question(get_task("ARC-Easy"), RECORDS["ARC-Easy"])
    assert q.contexts == ("Question: Which gas do plants take in?\nAnswer:",) * 4
    assert q.continuations == (" oxygen", " carbon dioxide", " helium", " steam") and q.label == 1
    q = parse_question(get_task("piqa"), RECORDS["piqa"])
    assert q.continuations == (" Hang it in the sun.", " Put it in the freezer.") and q.label == 0
    q = parse_question(get_task("winogrande"), RECORDS["winogrande"])  # lm-eval's partial scoring
    assert q.contexts == (
        "Sarah was a better surgeon than Maria so Sarah",
        "Sarah was a better surgeon than Maria so Maria",
    )
    assert q.continuations == (" always got the easier cases.",) * 2 and q.label == 1
    q = parse_question(get_task("boolq"), RECORDS["boolq"])
    assert q.contexts[0] == "Question: is the sky blue on a clear day?\nAnswer:" and q.continuations == (" yes", " no")
    assert q.label == 0
    assert parse_question(get_task("social_i_qa"), RECORDS["social_i_qa"]).continuations[2] == " sleep"


def test_parse_refuses_what_it_cannot_score():
    with pytest.raises(ShearsError, match="not a multiple-choice task"):
        parse_question(get_task("gsm8k"), {"instruction": "2+2?", "answer": "4"})
    with pytest.raises(ShearsError, match="cannot match the answer"):
        parse_question(get_task("ARC-Easy"), {**RECORDS["ARC-Easy"], "answer": "answer7"})


@pytest.fixture(scope="module")
def tiny():
    model, tok = make_model("llama")
    return model.eval(), tok


def _requests():
    out = []
    for name, record in RECORDS.items():
        q = parse_question(get_task(name), record)
        out += list(zip(q.contexts, q.continuations))
    return out


def test_logliks_match_lm_evaluation_harness(tiny):
    """The same (context, continuation) requests through lm-eval's HFLM: the same summed log-likelihoods."""
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
    from lm_eval.api.instance import Instance

    model, tok = tiny
    pairs = _requests()
    # packed: choices after one shared context, questions side by side in a row; a small row budget splits them
    ours = torch_loglik_fn(model, tok)(pairs)
    np.testing.assert_allclose(torch_loglik_fn(model, tok, max_tokens=40)(pairs), ours, rtol=1e-5, atol=1e-5)
    lm = lm_eval_hf.HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu")
    theirs = [
        ll
        for ll, _ in lm.loglikelihood(
            [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True
        )
    ]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(ours, 3))) > len(ours) // 2  # distinct scores: the comparison says something
    # and the untuned model's acc / acc_norm per question are lm-eval's: the argmax of HFLM's log-likelihoods,
    # raw and divided by the choice's length (lm-eval's acc_norm, the target delimiter not counted)
    at = 0
    for name, record in RECORDS.items():
        q = parse_question(get_task(name), record)
        n = len(q.continuations)
        mine = score_likelihood(get_task(name), [record], torch_loglik_fn(model, tok)).samples[0]
        lengths = np.array([len(c) - c.startswith(" ") for c in q.continuations])
        assert mine["prediction"] == int(np.argmax(theirs[at : at + n]))
        assert mine["prediction_norm"] == int(np.argmax(np.array(theirs[at : at + n]) / lengths))
        at += n


def test_loglik_is_the_sum_of_token_log_probs(tiny):
    """An independent recomputation: one unbatched forward over context + continuation, log-softmax, gather."""
    model, tok = tiny
    context, continuation = _requests()[1]
    ctx, cont = encode_pair(tok, context, continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
    want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert torch_loglik_fn(model, tok)([(context, continuation)])[0] == pytest.approx(want, abs=1e-4)


def test_acc_and_acc_norm_and_interval(tiny):
    model, tok = tiny
    task = get_task("ARC-Easy")
    records = [RECORDS["ARC-Easy"]] * 3 + [RECORDS["openbookqa"]] * 2
    res = score_likelihood(task, records, torch_loglik_fn(model, tok))
    for s, r in zip(res.samples, records):
        q = parse_question(task, r)
        assert s["prediction"] == int(np.argmax(s["loglikelihoods"]))
        lengths = [len(c.strip()) for c in q.continuations]
        assert s["prediction_norm"] == int(np.argmax(np.array(s["loglikelihoods"]) / lengths))
    assert res.acc == sum(s["prediction"] == s["label"] for s in res.samples) / 5
    lo, hi = res.to_dict()["acc_ci95"]
    assert lo <= res.acc <= hi
    # Wilson interval, checked against its closed form at a known point: 50 of 100 -> [0.4038, 0.5962]
    assert wilson_interval(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_eval_likelihood_on_torch_and_ir_agree(tmp_path, capsys):
    """eval --scoring likelihood: the f32 IR scores every choice as the torch model does."""
    from tiny_models import save_tiny

    from shears_nncf.exporting import export

    model_dir = save_tiny(tmp_path / "m", "llama")
    task_file = tmp_path / "arc.json"
    task_file.write_text(json.dumps([RECORDS["ARC-Easy"], RECORDS["openbookqa"]]))
    export(model_dir, tmp_path / "ir", config=ExportConfig(quantize="none"))
    common = ["eval", "--model", str(model_dir), "--tasks", f"ARC-Easy={task_file}", "--scoring", "likelihood"]
    assert main(common + ["--output", str(tmp_path / "t.json"), "--device", "cpu"]) == 0
    assert (
        main(common + ["--ir", str(tmp_path / "ir"), "--precision", "f32", "--output", str(tmp_path / "i.json")]) == 0
    )
    printed = capsys.readouterr().out
    assert "acc_norm" in printed and "[" in printed
    t = json.loads((tmp_path / "t.json").read_text())
    i = json.loads((tmp_path / "i.json").read_text())
    for a, b in zip(t["samples"]["ARC-Easy"], i["samples"]["ARC-Easy"]):
        np.testing.assert_allclose(a["loglikelihoods"], b["loglikelihoods"], rtol=1e-3, atol=1e-3)
    assert t["tasks"]["ARC-Easy"]["acc"] == i["tasks"]["ARC-Easy"]["acc"]


def test_eval_likelihood_with_an_adapter_scores_the_unmerged_model(tmp_path):
    """eval merges the adapter before scoring: the log-likelihoods of the unmerged PeftModel, not the base model's."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from tiny_models import save_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shears_nncf.config import EvalConfig
    from shears_nncf.evaluation import evaluate

    model_dir = save_tiny(tmp_path / "m", "llama")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora).save_pretrained(tmp_path / "adapter")
    task_file = tmp_path / "arc.json"
    task_file.write_text(json.dumps([RECORDS["ARC-Easy"], RECORDS["openbookqa"]]))
    cfg = EvalConfig(tasks=[f"ARC-Easy={task_file}"], scoring="likelihood", device="cpu")
    evaluate(str(model_dir), cfg, adapter=str(tmp_path / "adapter"), output=tmp_path / "e.json")
    got = [
        ll for s in json.loads((tmp_path / "e.json").read_text())["samples"]["ARC-Easy"] for ll in s["loglikelihoods"]
    ]

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pairs = [
        p
        for r in (RECORDS["ARC-Easy"], RECORDS["openbookqa"])
        for p in zip(*(lambda q: (q.contexts, q.continuations))(parse_question(get_task("ARC-Easy"), r)))
    ]
    plain = torch_loglik_fn(base, tok)(pairs)
    unmerged = torch_loglik_fn(PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval(), tok)(pairs)
    np.testing.assert_allclose(got, unmerged, rtol=1e-4, atol=1e-4)
    assert np.abs(np.array(unmerged) - np.array(plain)).max() > 1e-2  # the adapter changes the scores


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--tasks", "gsm8k"], "not a multiple-choice task"),
        (["--tasks", "wikitext2"], "perplexity"),
        (["--tasks", "ARC-Easy", "--ir", ".", "--runtime", "genai"], "no logits"),
        (["--tasks", "ARC-Easy", "--scoring", "vibes"], "--scoring must be one of"),
    ],
)
def test_eval_likelihood_errors(tiny_llama, shared_dir, capsys, extra, needle):
    args = ["eval", "--model", str(tiny_llama), "--limit", "2"] + extra
    if "--scoring" not in extra:
        args += ["--scoring", "likelihood"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def _boolq(question: str, answer: str) -> dict:
    return {
        "instruction": f"Please answer the following question with true or false, question: {question}?\n\n"
        "Answer format: true/false",
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


def test_a_model_tuned_to_always_answer_one_choice_scores_the_share_of_that_gold(tmp_path):
    """The known case: tuned in the answer-text format on BoolQ records whose answer is always "true" (" yes"), the
    scorer's acc is the fraction of test questions whose gold is true, counted from the records themselves."""
    from tiny_models import save_tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shears_nncf.adapters import load_adapter
    from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig, TrainingConfig
    from shears_nncf.training import train

    words = ["sky", "sea", "dog", "cat", "sun", "tree", "rock", "bird", "fish", "rain", "snow", "wind"]
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "train.json").write_text(
        json.dumps([_boolq(f"is the {w} {v}", "true") for w in words for v in ("big", "red")])
    )
    model_dir = save_tiny(tmp_path / "m", "llama")
    nls = NLSConfig(
        elasticity=ElasticityConfig(
            groups=[["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]], ranks=[[8]] * 3
        ),
        lora=LoraSettings(lora_alpha=16, lora_dropout=0.0),
    )
    training = TrainingConfig(
        data=[str(tmp_path / "boolq" / "train.json")],
        response_format="answer-text",
        batch_size=8,
        max_steps=30,
        warmup_steps=0,
        learning_rate=2e-2,
        val_set_size=0,
        logging_steps=10,
        save_steps=100,
        seed=0,
    )
    train(str(model_dir), tmp_path / "adapter", nls, training)

    tok = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    unseen = ["moon", "lake", "frog", "leaf", "hill", "cloud", "ant", "road", "bell", "corn"]
    records = [_boolq(f"is the {w} small", "true" if i < 7 else "false") for i, w in enumerate(unseen)]
    expected = sum(r["answer"] == "true" for r in records)
    assert expected == 7  # gold split 7 / 3: a model answering "no" everywhere would score 0.3, not 0.7
    untuned = score_likelihood(get_task("boolq"), records, torch_loglik_fn(base, tok))
    tuned = load_adapter(base, str(tmp_path / "adapter")).eval()
    res = score_likelihood(get_task("boolq"), records, torch_loglik_fn(tuned, tok))
    assert [s["prediction"] for s in res.samples] == [0] * len(records)  # " yes" (choice 0) everywhere
    assert res.correct == expected and res.acc == pytest.approx(expected / len(records))
    assert untuned.acc != res.acc  # the random model did not answer "yes" everywhere already: the tuning did
