"""Stage 3 benchmark: sub-adapter search on 50%-sparse SmolLM2-135M after a short NLS run (cf. Shears, Table 6).

Prunes SmolLM2-135M-Instruct with Wanda (50% unstructured), trains an elastic-rank super-adapter (widths
32/24/16 for q+k+v, up, down of every block) with NLS for a few steps on GSM8K + ARC-Easy records, then runs
the search strategies with the validation-loss proxy and prints, for each, the chosen sub-adapter's validation
loss, its adapter parameters and the search time. Finally it loads the hill-climbing sub-adapter with stock
PEFT on the sparse model and checks its logits against the super-adapter with the same configuration.

Stages whose output already exists in --workdir are reused (delete the folder to start over)::

    python benchmarks/search_smollm2.py --steps 25 --train-samples 400 --budget 16 --limit 16
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig, PruningConfig, SearchConfig, TrainingConfig
from shears_nncf.elastic import SearchSpace, load_elastic_lora
from shears_nncf.models import load_model
from shears_nncf.pruning import prune
from shears_nncf.selection import search
from shears_nncf.training import train

logger = logging.getLogger("search_smollm2")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STRATEGIES = ("maximal", "heuristic", "hill-climbing", "nsga2", "minimal")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "shears_nncf" / "bench" / "search_smollm2")
    p.add_argument("--steps", type=int, default=25, help="NLS optimizer steps")
    p.add_argument("--train-samples", type=int, default=400)
    p.add_argument("--val", type=int, default=64, help="validation records carved off the training data")
    p.add_argument("--limit", type=int, default=16, help="score on the first N validation records only")
    p.add_argument("--budget", type=int, default=16, help="configurations hill-climbing / nsga2 may score")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args()


def sparse_model(work: Path) -> Path:
    out = work / "sparse"
    if not (out / "config.json").is_file():
        prune(
            "smollm2-135m",
            out,
            PruningConfig(
                sparsity_level=0.5, calibration=str(DATA / "calibration" / "c4_sample.json"), nsamples=32, seqlen=256
            ),
        )
    return out


def super_adapter(work: Path, sparse: Path, args) -> Path:
    out = work / "super"
    if (out / "elastic_config.json").is_file() and (out / "adapter_model.safetensors").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    nls = NLSConfig(
        elasticity=ElasticityConfig(
            groups=[["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]], ranks=[[32, 24, 16]] * 3
        ),
        lora=LoraSettings(lora_alpha=64, lora_dropout=0.1),
    )
    training = TrainingConfig(
        data=[str(DATA / "gsm8k" / "train.jsonl"), str(DATA / "llm_adapters" / "ARC-Easy" / "train.json")],
        learning_rate=3e-4,
        batch_size=8,
        max_steps=args.steps,
        warmup_steps=5,
        cutoff_len=256,
        val_set_size=args.val,
        max_train_samples=args.train_samples,
        logging_steps=10,
        save_steps=10_000,
        seed=42,
    )
    train(str(sparse), out, nls, training)
    return out


@torch.no_grad()
def check_extraction(sparse: Path, adapter: Path, sub: Path) -> float:
    """Max |logits difference| between stock PEFT with the extracted folder and the super-adapter, same config."""
    from peft import PeftModel

    config = json.loads((sub / "subnet_config.json").read_text())
    ids = torch.randint(100, 40_000, (2, 48), generator=torch.Generator().manual_seed(0))
    sup, ctl = load_elastic_lora(load_model(str(sparse)), adapter)
    ctl.activate(config)
    expected = sup.eval()(input_ids=ids).logits
    got = PeftModel.from_pretrained(load_model(str(sparse)), str(sub)).eval()(input_ids=ids).logits
    return (got - expected).abs().max().item()


def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("shears_nncf.selection").setLevel(logging.WARNING)  # one line per scored configuration otherwise
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sparse = sparse_model(work)
    adapter = super_adapter(work, sparse, args)
    logger.info("sparse model and super-adapter ready in %.0f s", time.perf_counter() - t0)
    space = SearchSpace.load(adapter)
    maximal_params = space.adapter_params(space.maximal())

    rows = []
    for strategy in args.strategies.split(","):
        out = work / f"search-{strategy}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = SearchConfig(
            strategy=strategy,
            eval="loss",
            budget=args.budget,
            limit=args.limit,
            neighbours=8,
            population=8,
            references=False,
            batch_size=8,
        )
        start = time.perf_counter()
        report = search(str(sparse), adapter, out, cfg)
        wall = time.perf_counter() - start
        chosen = report["chosen"]
        rows.append(
            {
                "strategy": strategy,
                "loss": chosen["metrics"]["loss"],
                "perplexity": chosen["metrics"]["perplexity"],
                "adapter_params": chosen["adapter_params"],
                "relative_params": chosen["adapter_params"] / maximal_params,
                "evaluations": report["num_evaluations"],
                "scoring_s": sum(e["seconds"] for e in report["evaluations"]),
                "wall_s": wall,
                "pareto_front": len(report["pareto_front"]),
            }
        )
        logger.info("%s: loss %.4f, %d evaluations, %.1f s", strategy, rows[-1]["loss"], rows[-1]["evaluations"], wall)

    hill = work / "search-hill-climbing"
    diff = check_extraction(sparse, adapter, hill) if "hill-climbing" in args.strategies else None
    result = {
        "rows": rows,
        "space": {
            "groups": len(space.groups),
            "size": f"3^{len(space.groups)}",
            "max_rank": space.max_rank,
            "maximal_params": maximal_params,
        },
        "validation_records": args.limit or args.val,
        "nls_steps": args.steps,
        "budget": args.budget,
        "peft_vs_super_max_abs_logit_diff": diff,
        "threads": torch.get_num_threads(),
    }
    (work / "search_benchmark.json").write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nSmolLM2-135M, 50% Wanda, NLS {args.steps} steps; {len(space.groups)} groups x widths [32, 24, 16]; "
        f"validation loss on {args.limit or args.val} held-out records; {torch.get_num_threads()} CPU threads\n"
    )
    print(
        "| sub-adapter | val. loss | val. ppl | adapter params | configs scored | scoring time (s) "
        "| search wall time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['loss']:.4f} | {r['perplexity']:.3f} | {r['adapter_params']:,} "
            f"({100 * r['relative_params']:.0f}%) "
            f"| {r['evaluations']} | {r['scoring_s']:.1f} | {r['wall_s']:.1f} |"
        )
    if diff is not None:
        print(f"\nstock PEFT load of the hill-climbing sub-adapter vs super-adapter: max |logit diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
