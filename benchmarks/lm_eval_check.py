"""Does the frontier's scorer give lm-eval's numbers on a real model? lm-evaluation-harness (its ``hf`` backend, the
shipped task files in ``shears_nncf/lm_eval_tasks``) scores the first ``--limit`` questions of each task with an
untuned model; the script compares its acc / acc_norm, question by question, with a frontier row's samples file
(``WORK/samples/<row>.json``, written by ``shears-nncf eval --scoring likelihood``'s scorer)::

    python benchmarks/lm_eval_check.py --samples WORK/samples/dense_none.json --limit 500

It prints, per task, both accuracies and the questions where the two disagree (0 expected; a near-tie in log
likelihoods may flip at f32 rounding).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS = {"boolq": "shears_boolq", "ARC-Easy": "shears_arc_easy", "ARC-Challenge": "shears_arc_challenge",
         "openbookqa": "shears_openbookqa"}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=Path, required=True, help="a frontier row's samples file (untuned model)")
    p.add_argument("--model", default=None, help="default: the samples file's model")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    import lm_eval
    from lm_eval.tasks import TaskManager

    from shears_nncf.lm_eval_tasks import TASK_DIR
    from shears_nncf.models import resolve_model_path

    ours = json.loads(args.samples.read_text())
    if ours.get("adapter") or ours.get("ir"):
        raise SystemExit("lm_eval_check: the samples are of a tuned model or an IR; pass an untuned torch row's")
    model = resolve_model_path(args.model or ours["model"])
    tasks = [t.strip() for t in args.tasks.split(",")]
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model},dtype=float32",
        tasks=[TASKS[t] for t in tasks],
        task_manager=TaskManager(include_path=TASK_DIR),
        batch_size=args.batch_size,
        device="cpu",
        limit=args.limit,
        log_samples=True,
    )
    out = {}
    for t in tasks:
        theirs = sorted(res["samples"][TASKS[t]], key=lambda s: s["doc_id"])
        mine = ours["samples"][t][: len(theirs)]
        acc = [s["acc"] for s in theirs]
        norm = [s.get("acc_norm", s["acc"]) for s in theirs]
        my_acc = [float(s["prediction"] == s["label"]) for s in mine]
        my_norm = [float(s["prediction_norm"] == s["label"]) for s in mine]
        out[t] = {
            "n": len(theirs),
            "lm_eval_acc": sum(acc) / len(acc),
            "ours_acc": sum(my_acc) / len(my_acc),
            "lm_eval_acc_norm": sum(norm) / len(norm),
            "ours_acc_norm": sum(my_norm) / len(my_norm),
            "acc_disagreements": sum(a != b for a, b in zip(acc, my_acc)),
            "acc_norm_disagreements": sum(a != b for a, b in zip(norm, my_norm)),
        }
        r = out[t]
        print(
            f"{t}: n={r['n']} acc lm-eval {r['lm_eval_acc']:.4f} ours {r['ours_acc']:.4f} "
            f"({r['acc_disagreements']} questions differ); acc_norm {r['lm_eval_acc_norm']:.4f} / "
            f"{r['ours_acc_norm']:.4f} ({r['acc_norm_disagreements']} differ)"
        )
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
