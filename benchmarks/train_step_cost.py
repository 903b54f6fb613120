"""What a CPU training step costs, by how the frozen base is stored and how records are batched.

The likelihood study (docs/results.md) trains three adapters on a 2-core machine, so the step time decides whether
it fits. Three variants train the NLS super-adapter of the study (ranks 32/24/16, dropout 0.1, bf16 autocast) on
micro-batches of the commonsense training records, taking turns micro-batch by micro-batch:

* ``f32-base``      the base weights in f32 under bf16 autocast (what ``--bf16`` did before): every pass casts
                    each frozen weight to bf16 again;
* ``bf16-base``     the base stored in bf16 (what ``--bf16`` does now), the adapter in f32, same batches;
* ``bf16-grouped``  the same with ``group_by_length`` (``StepGroupedSampler``): less padding.

Printed: median and total seconds per micro-batch (forward, backward, AdamW step), the padded and the real tokens
of all of them (with the default 8 rounds both orders hold the same 64 records)::

    python benchmarks/train_step_cost.py --model WORK/sparse/wanda50 --rounds 6   # accuracy_table's sparse model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy_table import SUITES, nls_config  # noqa: E402

from shears_nncf.datasets import load_instruction_data, tokenize_records  # noqa: E402
from shears_nncf.elastic import add_elastic_lora  # noqa: E402
from shears_nncf.io import data_root  # noqa: E402
from shears_nncf.models import load_model, load_tokenizer  # noqa: E402
from shears_nncf.training import StepGroupedSampler  # noqa: E402


def micro_batches(dataset, collate, order: list[int], micro: int, count: int) -> list[dict]:
    return [collate([dataset[i] for i in order[k * micro : (k + 1) * micro]]) for k in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the (sparse) model folder")
    p.add_argument(
        "--rounds",
        type=int,
        default=8,
        help="micro-batches per variant (8 x 8 = one mega-batch: both orders then hold the same records)",
    )
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--batch", type=int, default=16, help="records per optimizer step (the grouping unit)")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()

    from transformers import DataCollatorForSeq2Seq

    files = [str(data_root() / f) for f in SUITES["commonsense"][0]]
    records, _ = load_instruction_data(files, 64, args.seed)
    tok = load_tokenizer(args.model)
    dataset = tokenize_records(records, tok, 256)
    collate = DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, padding=True, return_tensors="pt")
    n = args.rounds
    g = torch.Generator().manual_seed(args.seed)
    random_order = list(RandomSampler(dataset, generator=g))
    lengths = [len(x) for x in dataset["input_ids"]]
    grouped_order = list(
        StepGroupedSampler(args.batch, lengths=lengths, generator=torch.Generator().manual_seed(args.seed))
    )
    batches = {
        "random": micro_batches(dataset, collate, random_order, args.micro_batch, n),
        "grouped": micro_batches(dataset, collate, grouped_order, args.micro_batch, n),
    }

    variants = {}
    for name, dtype, data in (
        ("f32-base", torch.float32, "random"),
        ("bf16-base", torch.bfloat16, "random"),
        ("bf16-grouped", torch.bfloat16, "grouped"),
    ):
        torch.manual_seed(args.seed)
        base = load_model(args.model, dtype=dtype)
        base.config.use_cache = False
        model, controller = add_elastic_lora(base, nls_config([32, 24, 16]))
        controller.activate_maximal()
        model.train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=3e-4)
        variants[name] = (model, opt, batches[data])

    def step(model, opt, b) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for model, opt, data in variants.values():  # warm-up
        step(model, opt, data[-1])
    times = {name: [] for name in variants}
    for r in range(n):
        for name, (model, opt, data) in variants.items():
            times[name].append(step(model, opt, data[r]))
    print(
        f"{args.model}: micro-batches of {args.micro_batch} commonsense records, {args.rounds} per variant, "
        "interleaved, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'variant':14s} {'median s/micro':>14s} {'total s':>8s} {'padded tokens':>14s} {'real tokens':>12s}")
    for name, (_, _, data) in variants.items():
        padded = sum(b["input_ids"].numel() for b in data)
        real = sum(int(b["attention_mask"].sum()) for b in data)
        print(f"{name:14s} {statistics.median(times[name]):14.2f} {sum(times[name]):8.1f} {padded:14d} {real:12d}")


if __name__ == "__main__":
    main()
