"""Likelihood scoring: packed rows against one sequence per choice, f32 against bf16, timed interleaved.

Why the CPU study (``benchmarks/likelihood_study.sh``) fits a 2-core machine: the packed scorer of
``shears_nncf.likelihood.torch_loglik_fn`` runs each question's context once for all its choices. This prints,
on the same questions, the sequences per second of

* ``per-choice f32``: every ``context + choice`` its own right-padded sequence (batches of 8), full logits,
* ``packed f32`` and ``packed bf16``: the package's scorer with the model in f32 / bf16,

timed in rounds (each variant scores the next chunk of questions in turn, so that noise from other jobs on the
machine falls on all of them), the largest log-likelihood difference to packed f32, and how many acc /
acc_norm predictions bf16 changes::

    python benchmarks/likelihood_speed.py --task ARC-Easy --limit 300
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from shears_nncf.likelihood import encode_pair, parse_question, torch_loglik_fn
from shears_nncf.models import load_model, load_tokenizer, resolve_model_path
from shears_nncf.tasks import get_task, load_test_records, task_test_file


def per_choice_fn(model, tokenizer, batch_size: int = 8):
    """The plain way: each (context, choice) a sequence of its own, right-padded, log-softmax over every position."""

    def score(pairs):
        out = []
        for i in range(0, len(pairs), batch_size):
            encoded = [encode_pair(tokenizer, c, x) for c, x in pairs[i:i + batch_size]]
            seqs = [(ctx + cont)[:-1] for ctx, cont in encoded]
            ids = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, s in enumerate(seqs):
                ids[j, :len(s)], mask[j, :len(s)] = torch.tensor(s), 1
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for j, (ctx, cont) in enumerate(encoded):
                rows = logp[j, len(ctx) - 1:len(ctx) - 1 + len(cont)]
                out.append(float(rows.gather(1, torch.tensor(cont)[:, None]).sum()))
        return out

    return score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="ARC-Easy")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--chunk", type=int, default=50, help="questions per variant per round")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    f32 = load_model(path)
    bf16 = load_model(path, dtype=torch.bfloat16)
    task = get_task(args.task)
    questions = [parse_question(task, r) for r in load_test_records(task_test_file(task), args.limit)]
    variants = {"per-choice f32": per_choice_fn(f32, tokenizer), "packed f32": torch_loglik_fn(f32, tokenizer),
                "packed bf16": torch_loglik_fn(bf16, tokenizer)}
    lls = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for start in range(0, len(questions), args.chunk):
        pairs = [pc for q in questions[start:start + args.chunk] for pc in zip(q.contexts, q.continuations)]
        for name, fn in variants.items():
            t = time.perf_counter()
            lls[name] += fn(pairs)
            seconds[name] += time.perf_counter() - t
    n_seq = len(lls["packed f32"])
    ref = np.array(lls["packed f32"])
    out = {"model": args.model, "task": args.task, "questions": len(questions), "sequences": n_seq,
           "torch_threads": torch.get_num_threads(), "variants": {}}
    for name in variants:
        got = np.array(lls[name])
        out["variants"][name] = {"sequences_per_s": round(n_seq / seconds[name], 1), "seconds": round(seconds[name], 1),
                                 "max_abs_diff_vs_packed_f32": float(np.abs(got - ref).max())}

    def predictions(values):
        i, acc, norm = 0, [], []
        for q in questions:
            ll = np.array(values[i:i + len(q.continuations)])
            i += len(q.continuations)
            acc.append(int(ll.argmax()))
            norm.append(int((ll / [max(len(c.lstrip()), 1) for c in q.continuations]).argmax()))
        return acc, norm

    (a32, n32), (a16, n16) = predictions(lls["packed f32"]), predictions(lls["packed bf16"])
    out["bf16_same_acc_prediction"] = f"{sum(x == y for x, y in zip(a32, a16))}/{len(questions)}"
    out["bf16_same_acc_norm_prediction"] = f"{sum(x == y for x, y in zip(n32, n16))}/{len(questions)}"
    labels = [q.label for q in questions]
    out["acc"] = {"f32": float(np.mean([a == y for a, y in zip(a32, labels)])),
                  "bf16": float(np.mean([a == y for a, y in zip(a16, labels)]))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
