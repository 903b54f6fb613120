"""Stage 1 beside llm-compressor: the same SmolLM2-135M, calibration windows and perplexity, pruned by each.

llm-compressor (vLLM's) ships ``WandaPruningModifier`` and ``SparseGPTModifier``, both with an OWL profile. It needs
transformers >= 5.15, which the pinned stack does not allow, so it runs in its own environment; the windows and the
perplexity come from this package, so the two implementations see the same inputs and are scored alike::

    python3 -m venv /tmp/llmc && /tmp/llmc/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1
    python benchmarks/llmcompressor_side_by_side.py prepare /tmp/llmc_cmp            # windows + model (this venv)
    /tmp/llmc/bin/python benchmarks/llmcompressor_side_by_side.py prune /tmp/llmc_cmp \\
        --runs wanda,sparsegpt,wanda+owl,sparsegpt+owl --sparsities 0.5,0.6,0.7        # llm-compressor's venv
    python benchmarks/llmcompressor_side_by_side.py score /tmp/llmc_cmp --ppl-windows 20  # this venv again

``prepare`` writes the calibration windows (``calibration_windows``, as ``wanda_smollm2.py`` builds them) and a
copy of the model; ``prune`` runs llm-compressor's ``oneshot`` once per run in a fresh process and saves each
model with its time and peak RSS; ``score`` measures every saved model's zero fraction and wikitext-2 perplexity
with ``shears_nncf.perplexity`` and prints the table. Only this script's ``prepare`` and ``score`` import
shears_nncf; ``prune`` imports only torch, transformers and llm-compressor.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

WINDOWS = "windows.json"
MODEL = "model"


def prepare(args) -> None:
    from shears_nncf.calibration import calibration_windows, default_calibration_source
    from shears_nncf.models import load_model, load_tokenizer, save_model

    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args.model)
    source = args.calibration or default_calibration_source()
    windows = calibration_windows(tokenizer, source, args.nsamples, args.seqlen, args.seed)
    (out / WINDOWS).write_text(json.dumps({"source": str(source), "nsamples": args.nsamples, "seqlen": args.seqlen,
                                           "seed": args.seed, "input_ids": windows.tolist()}))
    save_model(load_model(args.model), tokenizer, out / MODEL)
    print(f"{args.nsamples} x {args.seqlen} windows of {source} and {args.model} -> {out}")


def _prune_one(work: str, run: str, sparsity: float, owl_m: float, owl_lambda: float) -> dict:
    """One llm-compressor oneshot in this (fresh) process: returns its time and peak RSS."""
    import psutil
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work_dir = Path(work)
    data = json.loads((work_dir / WINDOWS).read_text())
    ids = data["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(w) for w in ids]})
    model = AutoModelForCausalLM.from_pretrained(work_dir / MODEL, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(work_dir / MODEL)
    method, _, profile = run.partition("+")
    # the decoder blocks (their Linears are pruned, block by block); embeddings and lm_head are not in them
    common = {"sparsity": sparsity, "mask_structure": "0:0", "targets": [r"re:.*layers\.\d+$"]}
    if profile == "owl":
        common.update(sparsity_profile="owl", owl_m=owl_m, owl_lmbda=owl_lambda)
    modifier = WandaPruningModifier(**common) if method == "wanda" else SparseGPTModifier(**common)
    proc, peak, stop = psutil.Process(), [0.0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    oneshot(model=model, dataset=dataset, recipe=[modifier], num_calibration_samples=len(ids),
            max_seq_length=data["seqlen"])
    seconds = time.perf_counter() - start
    stop.set()
    out = work_dir / f"llmc_{run}_{sparsity:g}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"run": f"llm-compressor {run}", "target": sparsity, "folder": out.name, "prune_s": round(seconds, 1),
            "peak_rss_mib": round(peak[0])}


def prune(args) -> None:
    """Each run in a fresh process; its row is added to ``pruned.json`` as soon as it ends, or its error is printed."""
    path = Path(args.work) / "pruned.json"
    for run in args.runs.split(","):
        for s in (float(x) for x in args.sparsities.split(",")):
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                try:
                    row = pool.submit(_prune_one, args.work, run, s, args.owl_threshold, args.owl_lambda).result()
                except Exception as e:  # llm-compressor's own failure: say which run, go on with the others
                    print(f"llm-compressor {run} at {s:g} failed: {type(e).__name__}: {e}", flush=True)
                    continue
            print(row, flush=True)
            old = json.loads(path.read_text()) if path.is_file() else []
            path.write_text(json.dumps([r for r in old if r["folder"] != row["folder"]] + [row], indent=1))


def score(args) -> None:
    import torch

    from shears_nncf.models import load_model, load_tokenizer, prunable_linears
    from shears_nncf.perplexity import perplexity, wikitext2_test_file

    work = Path(args.work)
    rows = json.loads((work / "pruned.json").read_text())
    windows = json.loads((work / WINDOWS).read_text())
    tokenizer = load_tokenizer(str(work / MODEL))
    for row in rows:
        model = load_model(str(work / row["folder"]))
        linears = prunable_linears(model)
        zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
        row["sparsity"] = zeros / sum(m.weight.numel() for m in linears.values())
        with torch.no_grad():
            row["ppl"] = perplexity(model, tokenizer, wikitext2_test_file(), seqlen=windows["seqlen"], max_windows=args.ppl_windows)
        print(row, flush=True)
    (work / "scored.json").write_text(json.dumps(rows, indent=1))
    print(f"\nllm-compressor on SmolLM2-135M, {windows['nsamples']} x {windows['seqlen']} windows of "
          f"{Path(windows['source']).name} (seed {windows['seed']}), wikitext-2 ppl on {args.ppl_windows} x {windows['seqlen']} tokens")
    print(f"{'run':32} {'target':>6} {'sparsity':>8} {'ppl':>10} {'prune s':>8} {'peak RSS MiB':>12}")
    for r in rows:
        print(f"{r['run']:32} {r['target']:6.2f} {r['sparsity']:8.3f} {r['ppl']:10.2f} {r['prune_s']:8.1f} {r['peak_rss_mib']:12d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("work")
    a.add_argument("--model", default="smollm2-135m")
    a.add_argument("--calibration")
    a.add_argument("--nsamples", type=int, default=16)
    a.add_argument("--seqlen", type=int, default=512)
    a.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("prune")
    b.add_argument("work")
    b.add_argument("--runs", default="wanda,sparsegpt,wanda+owl,sparsegpt+owl")
    b.add_argument("--sparsities", default="0.5,0.6,0.7")
    b.add_argument("--owl-threshold", type=float, default=5.0, help="OWL's M (llm-compressor's owl_m)")
    b.add_argument("--owl-lambda", type=float, default=0.08)
    c = sub.add_parser("score")
    c.add_argument("work")
    c.add_argument("--ppl-windows", type=int, default=20)
    args = p.parse_args()
    {"prepare": prepare, "prune": prune, "score": score}[args.step](args)


if __name__ == "__main__":
    main()
