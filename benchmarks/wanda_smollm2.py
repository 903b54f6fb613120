"""Stage 1 benchmark: wikitext-2 perplexity of SmolLM2-135M dense vs magnitude / Wanda / SparseGPT (uniform or OWL
per-block sparsity), prune time and memory.

    python benchmarks/wanda_smollm2.py                       # 32 x 512 C4 windows, ppl on 40 x 512 wikitext-2 tokens
    python benchmarks/wanda_smollm2.py --runs dense,wanda:unstructured --ppl-windows 8   # quicker
    python benchmarks/wanda_smollm2.py --sparsities 0.5,0.6,0.7 --nsamples 16 --ppl-windows 20 \
        --runs wanda:unstructured,sparsegpt:unstructured,wanda+owl:unstructured,sparsegpt+owl:unstructured

A run is ``dense`` or ``METHOD[+owl]:PATTERN``; each unstructured run is repeated for every ``--sparsities`` value.

Each row runs in a fresh process. Prune time is also given relative to one forward pass of the whole model
(lm_head included) over the same calibration windows and batch size, measured right after the prune so both
see the same machine load. Peak memory is the process RSS sampled every 20 ms while pruning; the RSS before
pruning (runtime, resident weights and calibration windows) is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import torch

from shears_nncf.calibration import calibration_windows, default_calibration_source
from shears_nncf.config import PruningConfig
from shears_nncf.memory import PeakRSS
from shears_nncf.models import load_model, load_tokenizer
from shears_nncf.perplexity import perplexity, wikitext2_test_file
from shears_nncf.pruning import sparsify

logger = logging.getLogger("wanda_smollm2")


def forward_seconds(model, windows: torch.Tensor, batch_size: int) -> float:
    """One forward pass of the whole model (lm_head included) over the calibration windows."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            model(input_ids=batch, use_cache=False)
    return time.perf_counter() - start


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def run_one(args: argparse.Namespace, run: str) -> dict:
    """One row of the table, in its own process so that its peak RSS is its own."""
    _setup_logging()
    tokenizer = load_tokenizer(args.model)
    windows = calibration_windows(tokenizer, args.calibration, args.nsamples, args.seqlen, args.seed)
    model = load_model(args.model)
    with torch.no_grad():  # safetensors weights are mapped lazily: make them resident before measuring
        sum(float(p.sum()) for p in model.parameters())
    run, _, level = run.partition("@")
    row: dict = {"run": run, "target": float(level) if level else None}
    if run != "dense":
        method, pattern = run.split(":", 1)
        method, _, profile = method.partition("+")
        config = PruningConfig(
            method=method,
            pattern=pattern,
            sparsity_level=float(level) if pattern == "unstructured" else 0.5,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            seed=args.seed,
            batch_size=args.batch_size,
            sparsity_profile=profile or "uniform",
            owl_threshold=args.owl_threshold,
            owl_lambda=args.owl_lambda,
        )
        rss_before = psutil.Process().memory_info().rss
        with PeakRSS(interval_s=0.02) as peak:
            report = sparsify(model, windows if method != "magnitude" else None, config)
        # the same dense matmuls as before pruning (zeros are stored densely), right after it: same machine load
        fwd = forward_seconds(model, windows, args.batch_size) if method != "magnitude" else None
        blocks = report["layer_sparsity"]["block_sparsity"]
        row.update(block_sparsity_range=[min(blocks), max(blocks)])
        row.update(
            sparsity=report["sparsity"],
            prune_s=report["seconds"],
            forward_s=fwd,
            prune_over_forward=report["seconds"] / fwd if fwd else None,
            rss_before_mib=rss_before / 2**20,
            peak_rss_mib=peak.peak_mb,
        )
    row["ppl"] = perplexity(model, tokenizer, wikitext2_test_file(), seqlen=args.seqlen, max_windows=args.ppl_windows)
    row["load_avg_1min"] = os.getloadavg()[0]  # other processes on the machine slow every timing down
    logger.info("%s", row)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calibration", default=None, help="default: ../shared/data/calibration/c4_sample.json")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8, help="calibration windows per block forward")
    ap.add_argument(
        "--ppl-windows", type=int, default=40, help="first N x seqlen tokens of the joined wikitext-2 test text"
    )
    ap.add_argument("--sparsities", default="0.5", help="comma-separated targets for every unstructured run")
    ap.add_argument("--owl-threshold", type=float, default=5.0)
    ap.add_argument("--owl-lambda", type=float, default=0.08)
    ap.add_argument(
        "--runs",
        default="dense,magnitude:unstructured,wanda:unstructured,wanda:2:4",
        help="comma-separated: dense and/or METHOD:PATTERN",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    _setup_logging()
    args.calibration = args.calibration or default_calibration_source()
    machine = (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = []
    runs = [
        r if r == "dense" or not r.endswith(":unstructured") else f"{r}@{s}"
        for r in args.runs.split(",")
        for s in (args.sparsities.split(",") if r.endswith(":unstructured") else [None])
    ]
    for run in runs:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows.append(pool.submit(run_one, args, run).result())

    print(
        f"\nSmolLM2-135M, calibration {args.nsamples} x {args.seqlen} tokens of {Path(args.calibration).name} "
        f"(seed {args.seed}, {args.batch_size} windows per block forward), "
        f"wikitext-2 ppl on {args.ppl_windows} x {args.seqlen} "
        f"tokens; {machine}"
    )
    print(
        f"{'run':28} {'target':>6} {'sparsity':>8} {'blocks':>11} {'ppl':>9} {'prune s':>8} {'fwd s':>7} "
        f"{'prune/fwd':>9} "
        f"{'RSS before':>11} {'peak RSS':>9} {'load':>5}"
    )
    for r in rows:

        def fmt(key: str, spec: str, unit: str = "") -> str:
            return format(r[key], spec) + unit if r.get(key) is not None else "-"

        blocks = "-" if "block_sparsity_range" not in r else "{:.2f}-{:.2f}".format(*r["block_sparsity_range"])
        print(
            f"{r['run']:28} {fmt('target', '.2f'):>6} {fmt('sparsity', '.3f'):>8} {blocks:>11} "
            f"{fmt('ppl', '.2f'):>9} "
            f"{fmt('prune_s', '.1f'):>8} "
            f"{fmt('forward_s', '.1f'):>7} {fmt('prune_over_forward', '.2f'):>9} "
            f"{fmt('rss_before_mib', '.0f', ' MiB'):>11} {fmt('peak_rss_mib', '.0f', ' MiB'):>9} "
            f"{fmt('load_avg_1min', '.1f'):>5}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "machine": machine, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
