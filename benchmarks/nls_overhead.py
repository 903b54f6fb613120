"""Cost of NLS elasticity: time and peak memory per optimizer step, NLS vs plain PEFT LoRA at the same rank.

Three variants train the same model on the same batches with the same Trainer settings:

* ``lora``        stock ``transformers.Trainer`` + stock PEFT LoRA, r = 32 on the Shears Llama targets;
* ``nls-max``     :class:`shears_nncf.train.NLSTrainer` with the elastic super-adapter, the maximal (r = 32)
                  sub-adapter activated for every micro-batch: the overhead of the elasticity itself;
* ``nls-random``  NLS as it trains: a uniformly drawn sub-adapter (widths 32/24/16) per micro-batch.

Each variant runs in a fresh process (so peak RSS is its own), in interleaved rounds so that load from other
users of the machine hits all variants alike; the per-step figure is the median over all measured steps.

    python benchmarks/nls_overhead.py --model smollm2-135m --batch 4 --seqlen 256 --steps 10 --warmup 2 --rounds 2
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
import threading
import time
from pathlib import Path

VARIANTS = ("lora", "nls-max", "nls-random")
TARGETS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]  # nncf_shears_llama.json
WIDTHS = [32, 24, 16]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_adapters" / "math_data.json"

logger = logging.getLogger("nls_overhead")


def _windows(tokenizer, n: int, seqlen: int) -> list[dict]:
    """``n`` windows of exactly ``seqlen`` tokens of LLM-Adapters math prompts (labels = inputs)."""
    from shears_nncf.datasets import format_prompt, load_records

    ids: list[int] = []
    for rec in load_records(str(DATA)):
        ids += tokenizer(format_prompt(rec))["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= n * seqlen:
            break
    return [{"input_ids": ids[i * seqlen:(i + 1) * seqlen], "labels": ids[i * seqlen:(i + 1) * seqlen]} for i in range(n)]


class _RSSPeak:
    """Largest resident set size seen by a 2 ms sampler while running (CPU); the CUDA allocator peak on GPU."""

    def __init__(self):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def _child(args) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig
    from shears_nncf.elastic import add_elastic_lora
    from shears_nncf.models import load_model, load_tokenizer
    from shears_nncf.train import NLSSampler, NLSTrainer

    torch.set_num_threads(args.threads)
    set_seed(0)
    tok = load_tokenizer(args.model)
    model = load_model(args.model)
    model.config.use_cache = False
    nls = NLSConfig(elasticity=ElasticityConfig(groups=TARGETS, widths=[WIDTHS] * len(TARGETS)),
                    lora=LoraSettings(lora_alpha=64, lora_dropout=0.1))
    total_steps = args.warmup + args.steps
    data = _windows(tok, total_steps * args.batch, args.seqlen)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step > args.warmup:
                times.append(time.perf_counter() - self.t0)

    targs = TrainingArguments(
        output_dir=args.scratch, per_device_train_batch_size=args.batch, max_steps=total_steps, learning_rate=3e-4,
        warmup_steps=0, logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        remove_unused_columns=False, dataloader_pin_memory=False,
    )
    collate = lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
    if args.variant == "lora":
        from peft import LoraConfig, get_peft_model

        from shears_nncf.elastic import build_search_space

        space = build_search_space(model, nls.elasticity, nls.lora)
        targets = [m for g in space.groups for m in g.modules]
        peft_model = get_peft_model(model, LoraConfig(r=max(WIDTHS), lora_alpha=64, lora_dropout=0.1,
                                                      target_modules=targets, task_type="CAUSAL_LM"))
        trainer = Trainer(model=peft_model, args=targs, train_dataset=data, data_collator=collate, callbacks=[StepTimer()])
    else:
        peft_model, ctl = add_elastic_lora(model, nls)

        class MaximalSampler(NLSSampler):
            def configs(self, step, micro=0):
                return [self.space.maximal()]

        sampler = (MaximalSampler if args.variant == "nls-max" else NLSSampler)(ctl.space, seed=0)
        trainer = NLSTrainer(model=peft_model, args=targs, train_dataset=data, data_collator=collate,
                             callbacks=[StepTimer()], controller=ctl, sampler=sampler)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    with _RSSPeak() as mem:
        trainer.train()
    out = {
        "variant": args.variant, "step_seconds": times, "trainable_params": trainable,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_rss_increase_mib": (mem.peak - mem.base) / 2**20,
        "device": str(trainer.args.device), "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_variant(variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--batch", str(args.batch),
           "--seqlen", str(args.seqlen), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--scratch", args.scratch]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="measured optimizer steps per round")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every variant")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", help="where to save the raw results")
    p.add_argument("--scratch", default="/tmp/nls_overhead")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.variant = args.child
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(_child(args)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            res = _run_variant(v, args)
            logger.info("round %d %-10s median step %.3f s", r + 1, v, statistics.median(res["step_seconds"]))
            runs[v].append(res)
    base = statistics.median(t for res in runs["lora"] for t in res["step_seconds"])
    rows = []
    for v in VARIANTS:
        steps = [t for res in runs[v] for t in res["step_seconds"]]
        med = statistics.median(steps)
        rows.append({
            "variant": v, "median_step_s": med, "min_step_s": min(steps), "vs_lora": med / base - 1, "n_steps": len(steps),
            "peak_rss_mib": max(res["peak_rss_mib"] for res in runs[v]),
            "train_rss_increase_mib": max(res["train_rss_increase_mib"] for res in runs[v]),
            "trainable_params": runs[v][0]["trainable_params"],
            **({"cuda_peak_mib": runs[v][0]["cuda_peak_mib"]} if "cuda_peak_mib" in runs[v][0] else {}),
        })
    dev = runs["lora"][0]
    print(f"\n{args.model}, batch {args.batch} x {args.seqlen} tokens, {dev['device']}, {dev['threads']} threads, "
          f"{args.rounds} rounds x {args.steps} measured steps (after {args.warmup} warm-up)")
    print("| variant | median s/step | min s/step | vs LoRA r=32 | peak RSS MiB | RSS increase in training MiB | trainable params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_step_s']:.3f} | {r['min_step_s']:.3f} | {r['vs_lora']:+.1%} | "
              f"{r['peak_rss_mib']:.0f} | {r['train_rss_increase_mib']:.0f} | {r['trainable_params']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
