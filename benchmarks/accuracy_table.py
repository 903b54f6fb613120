"""The Shears ablation table (paper, Table 4) on one model: does NLS beat plain LoRA on a Wanda-sparse model?

For every sparsity (0 = the dense model) it produces the rows

* ``none``      the model without tuning,
* ``lora``      a plain LoRA adapter at the largest rank (the same trainer with a one-width search space),
* ``nls/<sub>`` an NLS super-adapter (widths 32/24/16 by default), its sub-adapters ``maximal``, ``heuristic``,
  ``hill-climbing`` (validation-loss search) and ``minimal``,

each trained on the suite's training files and scored on its full test sets with the package's own stages
(``prune``, ``train``, ``search``, ``evaluate``). Sub-adapters are chosen on the validation split carved off
the training data, never on a test set. Every artefact lives under ``--work`` and every finished row is
saved in ``--results`` at once, so an interrupted run (or one split into several runs with ``--rows``)
continues where it stopped::

    python benchmarks/accuracy_table.py --suite commonsense --work /tmp/acc --results /tmp/acc/commonsense.json
    python benchmarks/accuracy_table.py --suite gsm8k --sparsities 0,0.5 --epochs 1 --rows none,lora,nls

Hyper-parameters default to the paper's (Tables 7-9: lr 3e-4, batch 16, alpha 64, cutoff 256, 3 epochs,
q/k/v, up, down as three elastic groups per block); ``--epochs`` / ``--max-steps`` shorten a run, ``--limit``
scores only the first N test questions (the table then says so).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from shears_nncf.config import (
    ElasticityConfig,
    EvalConfig,
    LoraSettings,
    NLSConfig,
    PruningConfig,
    SearchConfig,
    TrainingConfig,
)
from shears_nncf.elastic import SearchSpace
from shears_nncf.errors import ShearsError
from shears_nncf.evaluation import evaluate
from shears_nncf.io import data_root, write_json
from shears_nncf.pruning import prune
from shears_nncf.selection import extract_subadapter, search
from shears_nncf.training import train

logger = logging.getLogger("accuracy_table")

#: suite: (training files under the data root, test tasks)
SUITES = {
    "commonsense": (
        [f"llm_adapters/{t}/train.json" for t in ("boolq", "ARC-Easy", "ARC-Challenge", "openbookqa")],
        ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"],
    ),
    "gsm8k": (["gsm8k/train.jsonl"], ["gsm8k"]),
}
SUBADAPTERS = ("maximal", "heuristic", "hill-climbing", "minimal")
METHODS = ("none", "lora", "nls")
GROUPS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="commonsense")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", type=Path, required=True, help="folder for sparse models, adapters and per-row samples")
    p.add_argument("--results", type=Path, help="JSON file the rows accumulate in (default: WORK/SUITE.json)")
    p.add_argument("--sparsities", default="0,0.4,0.5,0.7", help="comma-separated; 0 is the dense model")
    p.add_argument("--rows", default=",".join(METHODS), help="which of none, lora, nls to produce")
    p.add_argument("--subadapters", default=",".join(SUBADAPTERS), help="which NLS sub-adapters to score")
    p.add_argument(
        "--data-root", type=Path, default=None, help="folder holding llm_adapters/ and gsm8k/ (default ../shared/data)"
    )
    p.add_argument("--train-data", help="comma-separated training files instead of the suite's")
    p.add_argument("--tasks", help="comma-separated tasks (TASK or TASK=FILE) instead of the suite's test sets")
    p.add_argument("--widths", default="32,24,16")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--warmup-steps", type=int, default=100, help="linear warm-up (the paper's 100; keep it below --max-steps)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=None, help="default: the whole batch on a GPU, 4 on a CPU")
    p.add_argument("--val-set-size", type=float, default=120, help="validation records for the search (or a fraction)")
    p.add_argument("--budget", type=int, default=30, help="configurations hill-climbing may score")
    p.add_argument("--calibration", default=None, help="Wanda calibration text (default: the C4 sample)")
    p.add_argument(
        "--prune-method",
        default="wanda",
        help="stage 1: wanda, sparsegpt, magnitude, optionally +owl (per-block ratios)",
    )
    p.add_argument("--nsamples", type=int, default=128, help="Wanda calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per Wanda calibration window")
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions of each test set")
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: 64 on a GPU, 8 on a CPU")
    p.add_argument(
        "--scoring",
        choices=("generate", "likelihood"),
        default="generate",
        help="generate: LLM-Adapters' protocol (the paper's); likelihood: each choice's log-likelihood "
        "(lm-eval's acc, with 95%% intervals), which shows a small model's knowledge without a trained "
        "answer format",
    )
    p.add_argument(
        "--eval-precision",
        choices=("f32", "bf16"),
        default="f32",
        help="precision the scored models run in (bf16: faster on an AMX CPU)",
    )
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on when a GPU is used")
    p.add_argument(
        "--group-by-length", action="store_true", help="batch training records of similar length (less padding)"
    )
    p.add_argument(
        "--save-steps", type=int, default=100, help="training checkpoints: how much an interrupted run loses"
    )
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    args.results = args.results or args.work / f"{args.suite}.json"
    return args


def sparsity_key(s: float, method: str = "wanda") -> str:
    return "dense" if s == 0 else f"{method}{round(100 * s)}"


def prune_config(method: str, sparsity: float, args) -> PruningConfig:
    """Stage 1 from ``--prune-method`` (``METHOD[+owl]``), unstructured, on the study's calibration windows."""
    name, _, profile = method.partition("+")
    return PruningConfig(
        method=name,
        sparsity_profile=profile or "uniform",
        sparsity_level=sparsity,
        calibration=args.calibration,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
    )


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


class Table:
    """The results file: settings, machine, and one entry per finished row, rewritten after each row."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"rows": {}}
        old = self.data.get("settings")
        if old and old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise SystemExit(
                f"accuracy_table: {path} holds rows made with other settings ({', '.join(changed)}); "
                "pass another --results or the same settings"
            )
        self.data["settings"] = settings

    def has(self, key: str) -> bool:
        return key in self.data["rows"]

    def add(self, key: str, row: dict) -> None:
        self.data["rows"][key] = row
        self.data.setdefault("machines", {})[key] = machine()
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(tmp, self.data)
        os.replace(tmp, self.path)


def nls_config(widths: list[int]) -> NLSConfig:
    return NLSConfig(
        elasticity=ElasticityConfig(groups=[list(g) for g in GROUPS], ranks=[list(widths) for _ in GROUPS]),
        lora=LoraSettings(lora_alpha=64.0, lora_dropout=0.1),
    )


def training_config(args, data: list[str], gpu: bool) -> TrainingConfig:
    micro = args.micro_batch_size or (args.batch_size if gpu else min(4, args.batch_size))
    return TrainingConfig(
        data=data,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        batch_size=args.batch_size,
        micro_batch_size=micro,
        epochs=args.epochs,
        max_steps=args.max_steps,
        val_set_size=args.val_set_size,
        bf16=args.bf16,
        group_by_length=args.group_by_length,
        save_steps=args.save_steps,
        save_total_limit=1,
        logging_steps=10,
        seed=args.seed,
    )


LOG_FORMAT = dict(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _train_child(*args, **kwargs) -> None:
    logging.basicConfig(**LOG_FORMAT)
    train(*args, **kwargs)


def trained(model_dir: str, out: Path, nls: NLSConfig, tcfg: TrainingConfig) -> dict:
    """Train into ``out`` unless it holds a finished run; continue from its last checkpoint if it holds one.

    The training runs in a child process, whose memory (5 GB for SmolLM2) goes back when it ends; the parent
    that had trained was measured to score its next row slower than a fresh one.
    """
    report = out / "training_report.json"
    if not report.is_file():
        resume = any(out.glob("checkpoint-*"))
        if not resume and out.exists():
            shutil.rmtree(out)  # a run killed before its first checkpoint: start it again
        child = multiprocessing.get_context("spawn").Process(
            target=_train_child, args=(model_dir, out, nls, tcfg), kwargs={"resume": resume}
        )
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(
                f"training {out} failed (exit code {child.exitcode}); rerun to continue from its last checkpoint"
            )
    return json.loads(report.read_text())


def score(
    model_dir: str, adapter: Optional[Path], tasks: list[str], args, out: Path, ir: Optional[Path] = None
) -> dict:
    """The row's accuracies: the torch model (+ ``adapter``), or with ``ir`` that IR (its stored precision)."""
    cfg = EvalConfig(
        tasks=tasks,
        limit=args.limit,
        batch_size=args.eval_batch_size,
        scoring=args.scoring,
        precision=None if ir else args.eval_precision,
        runtime="infer",
    )
    res = evaluate(model_dir, cfg, adapter=str(adapter) if adapter else None, ir=str(ir) if ir else None, output=out)
    if args.scoring == "likelihood":  # acc is the row's accuracy; acc_norm and the 95% intervals ride along
        acc = {
            name: {
                "accuracy": r["acc"],
                "acc_ci95": r["acc_ci95"],
                "acc_norm": r["acc_norm"],
                "acc_norm_ci95": r["acc_norm_ci95"],
                **{k: r[k] for k in ("correct", "total", "seconds")},
            }
            for name, r in res["tasks"].items()
        }
    else:
        acc = {name: {k: r[k] for k in ("accuracy", "correct", "total", "seconds")} for name, r in res["tasks"].items()}
    return {
        "tasks": acc,
        "mean": sum(r["accuracy"] for r in acc.values()) / len(acc),
        "eval_seconds": round(sum(r["seconds"] for r in acc.values()), 1),
        "device": res.get("device"),
    }


def run(args: argparse.Namespace) -> dict:
    root = args.data_root or data_root()
    files, tasks = SUITES[args.suite]
    data = args.train_data.split(",") if args.train_data else [str(root / f) for f in files]
    tasks = args.tasks.split(",") if args.tasks else tasks
    for f in data:
        if not Path(f).is_file():
            raise SystemExit(f"accuracy_table: training file {f} does not exist; pass --data-root or --train-data")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods = [m.strip() for m in args.rows.split(",") if m.strip()]
    subs = [s.strip() for s in args.subadapters.split(",") if s.strip()]
    if bad := [m for m in methods if m not in METHODS] + [s for s in subs if s not in SUBADAPTERS]:
        raise SystemExit(f"accuracy_table: unknown row(s) {bad}; rows are {METHODS}, sub-adapters {SUBADAPTERS}")
    widths = sorted((int(w) for w in args.widths.split(",")), reverse=True)
    gpu = torch.cuda.is_available()
    args.bf16 = gpu if args.bf16 is None else args.bf16
    args.eval_batch_size = args.eval_batch_size or (64 if gpu else 8)
    tcfg = training_config(args, data, gpu)
    settings = {
        "suite": args.suite,
        "model": args.model,
        "train_data": [Path(f).name for f in data],
        "tasks": tasks,
        "widths": widths,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "batch_size": args.batch_size,
        "val_set_size": args.val_set_size,
        "budget": args.budget,
        "wanda": {"nsamples": args.nsamples, "seqlen": args.seqlen},
        "limit": args.limit,
        "seed": args.seed,
        "bf16": args.bf16,
        "group_by_length": args.group_by_length,
        "scoring": args.scoring,
        "eval_precision": args.eval_precision,
    }
    if args.prune_method != "wanda":  # absent means Wanda, as in the result files written before the option
        settings["prune_method"] = args.prune_method
    try:  # a bad --prune-method fails before any work
        prune_config(args.prune_method, 0.5, args)
    except ShearsError as e:
        raise SystemExit(f"accuracy_table: --prune-method {args.prune_method}: {e}") from None
    table = Table(args.results, settings)
    started = time.perf_counter()

    for s in sparsities:
        skey = sparsity_key(s, args.prune_method)
        folder = args.work / args.suite / skey
        wanted = [f"{skey}/{m}" for m in methods if m != "nls"]
        wanted += [f"{skey}/nls/{x}" for x in subs] if "nls" in methods else []
        if all(table.has(k) for k in wanted):
            logger.info("%s: every requested row is in %s", skey, args.results)
            continue
        model_dir = args.model
        prune_seconds = None
        if s > 0:
            sparse = args.work / "sparse" / skey  # shared by both suites
            if not (sparse / "config.json").is_file():
                t0 = time.perf_counter()
                prune(args.model, sparse, prune_config(args.prune_method, s, args))
                prune_seconds = round(time.perf_counter() - t0, 1)
            model_dir = str(sparse)

        if "none" in methods and not table.has(f"{skey}/none"):
            row = score(model_dir, None, tasks, args, folder / "none_samples.json")
            table.add(f"{skey}/none", {"sparsity": s, "method": "none", "prune_seconds": prune_seconds, **row})
            log_row(f"{skey}/none", row)

        if "lora" in methods and not table.has(f"{skey}/lora"):
            rep = trained(model_dir, folder / "lora", nls_config(widths[:1]), tcfg)
            row = score(model_dir, folder / "lora", tasks, args, folder / "lora_samples.json")
            lora_space = SearchSpace.load(folder / "lora")
            params = lora_space.adapter_params(lora_space.maximal())
            table.add(
                f"{skey}/lora",
                {
                    "sparsity": s,
                    "method": "lora",
                    "rank": widths[0],
                    "adapter_params": params,
                    **train_summary(rep),
                    **row,
                },
            )
            log_row(f"{skey}/lora", row)

        if "nls" in methods and not all(table.has(f"{skey}/nls/{x}") for x in subs):
            super_dir = folder / "nls"
            rep = trained(model_dir, super_dir, nls_config(widths), tcfg)
            space = SearchSpace.load(super_dir)
            hill = folder / "sub_hill-climbing"
            if "hill-climbing" in subs and not (hill / "search_report.json").is_file():
                search(
                    model_dir,
                    super_dir,
                    hill,
                    SearchConfig(
                        strategy="hill-climbing", eval="loss", budget=args.budget, seed=args.seed, batch_size=16
                    ),
                )
            report = json.loads((hill / "search_report.json").read_text()) if "hill-climbing" in subs else {}
            evals = {"hill-climbing": report["chosen"], **report["references"]} if report else {}
            for sub in subs:
                key = f"{skey}/nls/{sub}"
                if table.has(key):
                    continue
                sub_dir = hill if sub == "hill-climbing" else folder / f"sub_{sub}"
                if sub != "hill-climbing" and not (sub_dir / "adapter_config.json").is_file():
                    extract_subadapter(super_dir, getattr(space, sub)(), sub_dir)
                row = score(model_dir, sub_dir, tasks, args, folder / f"nls_{sub}_samples.json")
                ev = evals.get(sub) or {}
                table.add(
                    key,
                    {
                        "sparsity": s,
                        "method": f"nls/{sub}",
                        "val_loss": ev.get("score"),
                        "adapter_params": ev.get("adapter_params"),
                        "config": ev.get("config"),
                        "search_seconds": report.get("search_seconds"),
                        **train_summary(rep),
                        **row,
                    },
                )
                log_row(key, row)
    logger.info("done in %.0f s", time.perf_counter() - started)
    print(markdown(table.data))
    if args.scoring == "likelihood":
        print("\n" + markdown(table.data, "acc_norm"))
    return table.data


def train_summary(rep: dict) -> dict:
    return {
        "train_seconds": rep.get("train_seconds"),
        "train_steps": rep.get("global_step"),
        "train_loss": rep.get("train_loss"),
        "epochs": rep.get("epoch"),
    }


def log_row(key: str, row: dict) -> None:
    logger.info(
        "%s: %s (mean %.4f)", key, ", ".join(f"{t} {r['accuracy']:.4f}" for t, r in row["tasks"].items()), row["mean"]
    )


LABELS = {
    "none": "w/o tuning",
    "lora": "+ LoRA",
    "nls/maximal": "+ Shears, maximal",
    "nls/heuristic": "+ Shears, heuristic",
    "nls/hill-climbing": "+ Shears, hill-climbing",
    "nls/minimal": "+ Shears, minimal",
}


def markdown(data: dict, metric: str = "accuracy") -> str:
    """Rows in the paper's order: per sparsity, untuned, LoRA, then the NLS sub-adapters.

    ``metric`` is ``accuracy`` (acc with likelihood scoring) or, for likelihood scoring, ``acc_norm``.
    """
    rows = data["rows"]
    tasks = data["settings"]["tasks"]
    order = ["none", "lora"] + [f"nls/{x}" for x in SUBADAPTERS]
    keys = sorted(rows, key=lambda k: (rows[k]["sparsity"], order.index(rows[k]["method"])))
    lines = ["| model | " + " | ".join(tasks) + " | mean | adapter params |", "| --- |" + " --- |" * (len(tasks) + 2)]
    for k in keys:
        r = rows[k]
        method = data["settings"].get("prune_method", "wanda")
        method = method.replace("wanda", "Wanda").replace("sparsegpt", "SparseGPT").replace("owl", "OWL")
        name = ("dense" if r["sparsity"] == 0 else f"{method} {round(100 * r['sparsity'])}%") + " "
        name += LABELS[r["method"]]
        if r["sparsity"] == 0 and r["method"].startswith("nls/"):
            name = name.replace("Shears", "NLS")
        cells = [_cell(r["tasks"][t], metric) if t in r["tasks"] else "" for t in tasks]
        mean = sum(r["tasks"][t][metric] for t in r["tasks"]) / len(r["tasks"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * mean:.1f} | {r.get('adapter_params') or ''} |")
    n = {t: next((rows[k]["tasks"][t]["total"] for k in keys if t in rows[k]["tasks"]), None) for t in tasks}
    lines.append("")
    shown = "acc_norm" if metric == "acc_norm" else "acc"
    lines.append(
        "Accuracy in %; test questions per task: "
        + ", ".join(f"{t} {v}" for t, v in n.items())
        + "."
        + (
            f" Likelihood scoring ({shown}), ± half the 95% Wilson interval."
            if data["settings"].get("scoring") == "likelihood"
            else ""
        )
    )
    return "\n".join(lines)


def _cell(r: dict, metric: str = "accuracy") -> str:
    ci = "acc_norm_ci95" if metric == "acc_norm" else "acc_ci95"
    if ci not in r:
        return f"{100 * r[metric]:.1f}"
    lo, hi = r[ci]
    return f"{100 * r[metric]:.1f} ± {50 * (hi - lo):.1f}"


def main(argv: Optional[list[str]] = None) -> dict:
    logging.basicConfig(**LOG_FORMAT)
    return run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
