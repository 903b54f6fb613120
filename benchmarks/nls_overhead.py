"""Cost of NLS elasticity: time and peak memory per optimizer step, NLS vs plain PEFT LoRA at the same rank.

Three variants train the same model on the same batches:

* ``lora``        stock PEFT LoRA, r = 32 on the Shears Llama targets (q/k/v, up, down);
* ``nls-max``     the elastic super-adapter with the maximal (r = 32) sub-adapter activated every step, i.e.
                  the overhead of the elasticity itself (sampling, activation, sliced forward/backward);
* ``nls-random``  NLS as it trains: a uniformly drawn sub-adapter (widths 32/24/16) every step;
* ``nls-masked``  the same with the sparsity-masked update (``--sparse-adapter``, SQFT): each adapted layer forms
                  ``(B·A) ⊙ (W != 0)`` at its full size, the cost of an adapter that merges without filling zeros.

Time: one process holds one PEFT model; ``lora`` runs it with PEFT's own ``nn.Linear`` LoRA layers, the NLS
variants with the elastic subclasses (a class switch, same parameters), and the variants take turns step by
step (the order rotating every round), so that load from other users of the machine hits all of them alike.
Each step is what ``NLSTrainer`` does per micro-batch: draw + activate (NLS only), forward, backward, AdamW.
Because whole steps on a shared machine vary by tens of percent, the elasticity's own cost is also measured in
isolation: forward + backward of every LoRA A/B pair of the model (PEFT's ``nn.Linear`` vs the elastic
subclasses, on the same activations) taking turns, minimum of many runs), plus the per-step draw + activation.
Memory: each variant also trains a few steps with the real ``Trainer`` / ``NLSTrainer`` in a fresh process, whose
peak RSS (CPU) or CUDA allocator peak (GPU) is then its own.

    python benchmarks/nls_overhead.py --model smollm2-135m --batch 4 --seqlen 256 --steps 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("lora", "nls-max", "nls-random", "nls-masked")
TARGETS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]  # nncf_shears_llama.json
WIDTHS = [32, 24, 16]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_adapters" / "math_data.json"

logger = logging.getLogger("nls_overhead")


def _setup(args):
    """Model with the r = 32 elastic super-adapter, its controller, and ``n`` fixed batches."""
    import torch
    from transformers import set_seed

    from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig
    from shears_nncf.datasets import format_prompt, load_training_records
    from shears_nncf.elastic import add_elastic_lora
    from shears_nncf.models import load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    set_seed(0)
    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    model.config.use_cache = False
    nls = NLSConfig(
        elasticity=ElasticityConfig(groups=TARGETS, ranks=[WIDTHS] * len(TARGETS)),
        lora=LoraSettings(lora_alpha=64, lora_dropout=0.1),
    )
    peft_model, ctl = add_elastic_lora(model, nls)
    ids: list[int] = []
    need = args.n_batches * args.batch * args.seqlen
    for rec in load_training_records(str(DATA)):  # LLM-Adapters math prompts packed into full windows
        ids += tok(format_prompt(rec))["input_ids"] + [tok.eos_token_id]
        if len(ids) >= need:
            break
    windows = torch.tensor(ids[:need]).view(args.n_batches, args.batch, args.seqlen)
    batches = [{"input_ids": w, "labels": w} for w in windows]
    return peft_model, ctl, batches


# ------------------------------------------------------------------------------------------------- time


def _timing(args) -> dict:
    import torch
    from torch import nn

    from shears_nncf.adapters import SparseMaskedLora, lora_layers
    from shears_nncf.elastic import ElasticLoraA, ElasticLoraB
    from shears_nncf.training import NLSSampler, SamplingHistogram

    args.n_batches = args.steps + 1
    model, ctl, batches = _setup(args)
    model.train()
    pairs = list(ctl._pairs.values())
    layers = list(lora_layers(model).values())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    uniform = NLSSampler(ctl.space, seed=0)
    histogram = SamplingHistogram()

    def step(variant: str, k: int) -> float:
        t0 = time.perf_counter()
        for layer in layers:  # the masked update is a PEFT LoRA variant of the layer
            if variant == "nls-masked":
                layer.lora_variant["default"] = SparseMaskedLora()
            else:
                layer.lora_variant.pop("default", None)
        if variant == "lora":
            for a, b in pairs:  # PEFT's own layers: a stock rank-32 LoRA
                a.__class__, b.__class__ = nn.Linear, nn.Linear
        else:
            for a, b in pairs:
                a.__class__, b.__class__ = ElasticLoraA, ElasticLoraB
            config = ctl.space.maximal() if variant == "nls-max" else uniform.configs(k, 0)[0]
            ctl.activate(config)
            histogram.add(config)
        loss = model(**batches[k]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for k in range(args.steps + 1):  # round 0 is the warm-up
        order = VARIANTS[k % len(VARIANTS) :] + VARIANTS[: k % len(VARIANTS)]
        for v in order:
            t = step(v, k)
            if k:
                times[v].append(t)
        if k:
            logger.info("round %d/%d: %s", k, args.steps, ", ".join(f"{v} {times[v][-1]:.2f} s" for v in VARIANTS))
    return {
        "step_seconds": times,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "nls_random_mean_rank": _mean_rank(histogram),
        "adapter_layers": _adapter_layers(args, ctl),
    }


def _mean_rank(h) -> float:
    s = h.summary()["all_groups"]
    return sum(int(w) * n for w, n in s.items()) / max(1, sum(s.values()))


# ---------------------------------------------------------------------------------- adapter layers only


def _adapter_layers(args, ctl) -> dict:
    """Forward + backward time of all LoRA pairs on step-sized activations, PEFT layers vs elastic ones.

    The variants take turns and the minimum over ``--reps`` runs is kept: on a loaded machine the minimum is
    the run that nothing else interfered with. One thread: with more, OpenMP barriers waiting on descheduled
    threads of an oversubscribed machine dominate these millisecond-sized kernels.
    """
    from collections import Counter

    import torch
    from torch import nn

    from shears_nncf.elastic import ElasticLoraA, ElasticLoraB
    from shears_nncf.training import NLSSampler

    shapes = Counter(tuple(ctl.space.module_shapes[m]) for g in ctl.space.groups for m in g.modules)
    r_max = ctl.space.max_rank
    kinds = {"lora": None, "nls-max": r_max, "nls-r16": 16}

    def pair(fan_in: int, fan_out: int, rank):
        a, b = nn.Linear(fan_in, r_max, bias=False), nn.Linear(r_max, fan_out, bias=False)
        if rank is not None:
            a.__class__, b.__class__ = ElasticLoraA, ElasticLoraB
            a.active_rank = b.active_rank = rank
        x, grad = torch.randn(args.batch, args.seqlen, fan_in), torch.randn(args.batch, args.seqlen, fan_out)

        def run() -> float:
            t0 = time.perf_counter()
            b(a(x)).backward(grad)
            return time.perf_counter() - t0

        return run

    per_step = {k: 0.0 for k in kinds}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for (fan_in, fan_out), n in shapes.items():
        runs = {k: pair(fan_in, fan_out, r) for k, r in kinds.items()}
        best = {k: float("inf") for k in kinds}
        for _ in range(args.reps):
            for k in kinds:
                best[k] = min(best[k], runs[k]())
        for k in kinds:
            per_step[k] += n * best[k]
    sampler = NLSSampler(ctl.space, seed=0)
    best = float("inf")
    for k in range(args.reps * 10):
        t0 = time.perf_counter()
        ctl.activate(sampler.configs(k, 0)[0])
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return {
        "pairs": sum(shapes.values()),
        "reps": args.reps,
        "per_step_ms": {k: 1e3 * v for k, v in per_step.items()},
        "draw_activate_ms": 1e3 * best,
    }


# ----------------------------------------------------------------------------------------------- memory


def _memory_child(args) -> dict:
    """A few steps with the real Trainer (``lora``) or NLSTrainer (``nls-*``) in this fresh process."""
    import torch
    from peft import LoraConfig
    from transformers import Trainer, TrainingArguments

    from shears_nncf.memory import PeakRSS
    from shears_nncf.training import NLSSampler, NLSTrainer

    args.n_batches = args.mem_steps
    model, ctl, batches = _setup(args)
    rows = [{"input_ids": x, "labels": x} for b in batches for x in b["input_ids"]]
    collate = lambda rs: {k: torch.stack([r[k] for r in rs]) for k in rs[0]}  # noqa: E731
    targs = TrainingArguments(
        output_dir=args.scratch,
        per_device_train_batch_size=args.batch,
        max_steps=args.mem_steps,
        learning_rate=3e-4,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    if args.child == "lora":
        model = model.unload()  # back to the bare model, then a stock PEFT LoRA on the same targets
        from peft import get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=max(WIDTHS),
                lora_alpha=64,
                lora_dropout=0.1,
                task_type="CAUSAL_LM",
                target_modules=[m for g in ctl.space.groups for m in g.modules],
            ),
        )
        trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate)
    else:

        class MaximalSampler(NLSSampler):
            def configs(self, step, micro=0):
                return [self.space.maximal()]

        sampler = (MaximalSampler if args.child == "nls-max" else NLSSampler)(ctl.space, seed=0)
        if args.child == "nls-masked":
            from shears_nncf.adapters import mask_lora

            mask_lora(model)
        trainer = NLSTrainer(
            model=model, args=targs, train_dataset=rows, data_collator=collate, controller=ctl, sampler=sampler
        )
    with PeakRSS(interval_s=0.002) as mem:
        trainer.train()
    out = {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_rss_increase_mib": mem.peak_mb - mem.start_mb,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_child(variant: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--seqlen",
        str(args.seqlen),
        "--mem-steps",
        str(args.mem_steps),
        "--threads",
        str(args.threads),
        "--scratch",
        args.scratch,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="measured steps per variant (after one warm-up round)")
    p.add_argument("--mem-steps", type=int, default=2, help="Trainer steps of each memory process")
    p.add_argument("--reps", type=int, default=30, help="interleaved runs per adapter-layer shape (minimum kept)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="where to save the raw results")
    p.add_argument("--scratch", default="/tmp/nls_overhead")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(_memory_child(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    timing = _timing(args)
    mem = {}
    for v in VARIANTS:
        mem[v] = _run_child(v, args)
        logger.info("memory %-10s peak RSS %.0f MiB", v, mem[v]["peak_rss_mib"])
    t = timing["step_seconds"]
    rows = []
    for v in VARIANTS:
        ratios = [x / y for x, y in zip(t[v], t["lora"])]  # same round, same batch, neighbouring in time
        rows.append(
            {
                "variant": v,
                "median_step_s": statistics.median(t[v]),
                "min_step_s": min(t[v]),
                "median_paired_ratio": statistics.median(ratios),
                "min_ratio": min(t[v]) / min(t["lora"]),
                **mem[v],
            }
        )
    print(
        f"\n{args.model}, batch {args.batch} x {args.seqlen} tokens, {timing['device']}, "
        f"{timing['threads']} threads, "
        f"{args.steps} interleaved steps per variant after 1 warm-up round; nls-random mean rank "
        f"{timing['nls_random_mean_rank']:.1f}"
    )
    print(
        "| variant | median s/step | min s/step | vs LoRA r=32 (median of paired ratios) | vs LoRA (min/min) "
        "| peak RSS MiB | RSS growth in training MiB | trainable params |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['median_step_s']:.2f} | {r['min_step_s']:.2f} | "
            f"{r['median_paired_ratio'] - 1:+.1%} | {r['min_ratio'] - 1:+.1%} | {r['peak_rss_mib']:.0f} | "
            f"{r['train_rss_increase_mib']:.0f} | {r['trainable_params']:,} |"
        )
    al = timing["adapter_layers"]
    step_ms = 1e3 * rows[0]["median_step_s"]
    elastic_cost = al["per_step_ms"]["nls-max"] - al["per_step_ms"]["lora"] + al["draw_activate_ms"]
    print(
        f"\nAdapter layers alone (fwd+bwd of all {al['pairs']} LoRA pairs per step, 1 thread, min of {al['reps']}): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in al["per_step_ms"].items())
        + f"; draw + activate {al['draw_activate_ms']:.2f} ms per micro-batch"
    )
    print(
        f"Elasticity cost at r=32 = (nls-max - lora adapter layers) + draw/activate = {elastic_cost:.1f} ms "
        f"= {elastic_cost / step_ms:+.2%} of the median LoRA step ({step_ms / 1e3:.1f} s), "
        f"{elastic_cost / al['per_step_ms']['lora']:+.1%} of the LoRA layers themselves"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "summary": rows, "timing": timing, "memory": mem}, indent=1)
        )


if __name__ == "__main__":
    main()
