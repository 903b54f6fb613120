"""Is the Shears IR the fastest way to run the model on this CPU, on the path users deploy?

Builds a Llama-architecture model (random weights, TinyLlama-1.1B's shape by default, or SmolLM2-135M), prunes
it to 50% and 70%, gives each a rank-24 LoRA on q,k,v,up,down (a heuristic sub-adapter's shape), and exports
through ``shears_nncf.exporting``:

    dense int8-weights | dense int4-weights | dense W8A8 (every Linear)   what users deploy instead
    50% / 70%, every Linear W8A8, no adapter                              the sparse kernel's bound
    50% / 70%, the export default, no adapter                             the base (a --merge deliverable's graph)
    50% / 70%, the export default + the unmerged LoRA                     the deliverable
    the same, its float-input layers int4 (advanced.float_input_weights)  the deliverable in fewer bytes

Then, at each thread count of ``--threads`` (default: 1, 2 and every core), it times them all **interleaved**
through OpenVINO GenAI's ``LLMPipeline`` (``decode_bench.interleaved``: one greedy generation per variant per
round) and prints per IR the median ms per token, the megabytes of weights a decode step reads (each
FullyConnected as the kernel it ran reads it: the sparse kernel its non-zeros and a bitmask,
``shears_nncf.ir.weight_bytes``), the time those bytes take at this machine's measured read bandwidth (the
memory bound) and how far the IR is from it; then the speed-up checks and, in plain words, whether sparsity pays
off on this CPU at that thread count::

    python benchmarks/export_bench.py --out /tmp/l1b                       # llama-1b, AMX host
    python benchmarks/export_bench.py --model smollm2-135m --out /tmp/sb   # any CPU
    python benchmarks/export_bench.py --out /tmp/l1b --variants dense-int4,s50-lora --threads 2
    python benchmarks/export_bench.py --out /tmp/l1b --reprint /tmp/l1b/export_bench.json   # a saved run again

Finished models and IRs in ``--out`` are reused, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch
from decode_bench import interleaved

from shears_nncf.benchmarking import cpu_info
from shears_nncf.config import AdvancedExportConfig, ExportConfig, PruningConfig
from shears_nncf.exporting import export
from shears_nncf.ir import IR_NAME, weight_bytes
from shears_nncf.models import load_model, load_tokenizer, save_model

logger = logging.getLogger("export_bench")

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
#: Llama shapes with random weights; llama-1b is TinyLlama-1.1B's layout with SmolLM2's vocabulary.
SIZES = {
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
    "llama-3b": dict(
        hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32, num_key_value_heads=32
    ),
}
#: label -> (sparsity or None for dense, with the adapter, export settings beyond the calibration), in table order
VARIANTS = {
    "dense-int8w": (None, False, dict(quantize="int8-weights")),
    "dense-int4w": (None, False, dict(quantize="int4-weights")),
    "dense-w8a8": (None, False, dict(quantize="w8a8", ignored_scopes=[])),
    "s50-w8a8-all": (0.5, False, dict(quantize="w8a8", ignored_scopes=[])),
    "s70-w8a8-all": (0.7, False, dict(quantize="w8a8", ignored_scopes=[])),
    "s50-base": (0.5, False, dict(quantize="w8a8")),
    "s70-base": (0.7, False, dict(quantize="w8a8")),
    "s50-lora": (0.5, True, dict(quantize="w8a8")),
    "s70-lora": (0.7, True, dict(quantize="w8a8")),
    "s50-lora-i4f": (0.5, True, dict(quantize="w8a8", advanced=AdvancedExportConfig(float_input_weights="int4"))),
    "s70-lora-i4f": (0.7, True, dict(quantize="w8a8", advanced=AdvancedExportConfig(float_input_weights="int4"))),
}
#: (what, numerator variant, denominator variant, target): ratio = TPOT(numerator) / TPOT(denominator)
CHECKS = [
    ("50% deliverable vs dense int4 (speed-up)", "dense-int4w", "s50-lora", 1.0),
    ("50% deliverable vs dense int8 (speed-up)", "dense-int8w", "s50-lora", 1.25),
    ("70% deliverable vs dense int4 (speed-up)", "dense-int4w", "s70-lora", 1.2),
    ("50% adapter cost (deliverable / base)", "s50-lora", "s50-base", 1.05),
    ("70% adapter cost (deliverable / base)", "s70-lora", "s70-base", 1.05),
    ("50% base vs dense int4 (a --merge deliverable)", "dense-int4w", "s50-base", None),
    ("70% base vs dense int4 (a --merge deliverable)", "dense-int4w", "s70-base", None),
    ("50% every Linear W8A8 vs dense int4", "dense-int4w", "s50-w8a8-all", None),
    ("70% every Linear W8A8 vs dense int4", "dense-int4w", "s70-w8a8-all", None),
    ("50% every Linear W8A8 vs dense W8A8", "dense-w8a8", "s50-w8a8-all", None),
    ("50% deliverable, float-input layers int4, vs int4", "dense-int4w", "s50-lora-i4f", None),
    ("70% deliverable, float-input layers int4, vs int4", "dense-int4w", "s70-lora-i4f", None),
    ("50% float-input layers int4 vs int8 (speed-up)", "s50-lora", "s50-lora-i4f", None),
    ("70% float-input layers int4 vs int8 (speed-up)", "s70-lora", "s70-lora-i4f", None),
]


def base_model(name: str, out: Path) -> Path:
    """A saved fp32 model folder: SmolLM2-135M itself, or a random Llama of a SIZES shape with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = out / f"{name}_dense"
    if (path / "config.json").is_file():
        return path
    tokenizer = load_tokenizer("smollm2-135m")
    if name == "smollm2-135m":
        model = load_model("smollm2-135m")
    else:
        cfg = LlamaConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **SIZES[name],
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    logger.info("%s: %.2fB parameters", name, sum(p.numel() for p in model.parameters()) / 1e9)
    save_model(model, tokenizer, path)
    return path


def sparse_model(dense: Path, sparsity: float, method: str, out: Path) -> Path:
    from shears_nncf.pruning import prune

    path = out / f"{dense.name.removesuffix('_dense')}_{method}{int(sparsity * 100)}"
    if not (path / "config.json").is_file():
        prune(dense, path, PruningConfig(method=method, sparsity_level=sparsity, nsamples=16, seqlen=256))
    return path


def heuristic_adapter(sparse: Path, rank: int, out: Path) -> Path:
    """A rank-`rank` LoRA on q,k,v,up,down with non-zero B (a trained sub-adapter's shape, random values)."""
    from peft import LoraConfig, get_peft_model

    path = out / f"{sparse.name}_lora{rank}"
    if (path / "adapter_config.json").is_file():
        return path
    peft_model = get_peft_model(
        load_model(str(sparse)), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    peft_model.save_pretrained(path)
    return path


def build_irs(args, labels: list[str]) -> dict[str, Path]:
    """Every IR of ``labels`` in ``args.out`` (exported unless already there)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = base_model(args.model, out)
    irs = {}
    for label in labels:
        sparsity, with_adapter, settings = VARIANTS[label]
        model = dense if sparsity is None else sparse_model(dense, sparsity, args.prune_method, out)
        adapter = heuristic_adapter(model, args.adapter_rank, out) if with_adapter else None
        ir = out / f"ir_{label}"
        if not (ir / IR_NAME).is_file():
            logger.info("exporting %s", label)
            export(
                model,
                ir,
                adapter=adapter,
                config=ExportConfig(
                    nsamples=args.nsamples, seqlen=args.seqlen, calibration=args.calibration, **settings
                ),
            )
        irs[label] = ir
    return irs


def read_bandwidth(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """GB/s at which ``threads`` threads read a buffer far larger than the caches (best of ``repeats`` float32 sums)."""
    torch.set_num_threads(threads)
    x = torch.ones(mib * 2**18)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best / 1e9


def measure(irs: dict[str, Path], threads: int, args) -> dict:
    """One interleaved GenAI run of every IR at ``threads``, with the weight bytes and the memory bound of each."""
    import openvino as ov

    bandwidth = read_bandwidth(threads)
    timed = interleaved(
        [f"{label}={ir}" for label, ir in irs.items()],
        threads=threads,
        rounds=args.rounds,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        runtime="genai",
    )
    core = ov.Core()
    for label, r in timed.items():
        sparse = {k["module"] for k in r["fc"] if k["sparse"]}
        per_layer = weight_bytes(core.read_model(irs[label] / IR_NAME), sparse)
        r["weight_mb_per_token"] = sum(per_layer.values()) / 1e6
        r["bound_ms"] = r["weight_mb_per_token"] / bandwidth  # MB / (GB/s) = ms
        r["sparse_fc"], r["fc_layers"] = len(sparse), len(r["fc"])
        del r["fc"]
    return {"threads": threads, "read_gb_s": bandwidth, "variants": timed}


def checks(variants: dict) -> list[dict]:
    """Each speed-up check as measured, and as it would be if every IR ran at its memory bound (``at_bound``).

    ``at_bound`` is the ratio of the two IRs' weight bytes per token, the ratio where both run at the read bandwidth.
    Decode is expected to approach that bound as cores are added, so a target beyond it is met only where the other
    IR stays further from its bound than this one (few cores, a compute-bound kernel).
    """
    rows = []
    for what, num, den, target in CHECKS:
        if num not in variants or den not in variants:
            continue
        ratio = variants[num]["tpot_ms"] / variants[den]["tpot_ms"]
        at_bound = variants[num]["weight_mb_per_token"] / variants[den]["weight_mb_per_token"]
        cost = "cost" in what  # a cost is at most its target; a speed-up at least
        meets = lambda x: None if target is None else (x <= target if cost else x >= target)  # noqa: E731
        rows.append(
            {
                "what": what,
                "value": round(ratio, 3),
                "at_bound": round(at_bound, 3),
                "target": target,
                "met": meets(ratio),
                "reachable_at_bound": meets(at_bound),
            }
        )
    return rows


def verdict(variants: dict, threads: int) -> str:
    """In plain words: does the sparse model beat the best dense weight-only format here, and with the adapter?"""
    dense = {k: v["tpot_ms"] for k, v in variants.items() if k in ("dense-int8w", "dense-int4w")}
    sparse = {k: v["tpot_ms"] for k, v in variants.items() if k.startswith("s")}
    if not dense or not sparse:
        return ""
    best_dense = min(dense, key=dense.get)
    best_sparse = min(sparse, key=sparse.get)
    ratio = dense[best_dense] / sparse[best_sparse]
    words = (
        f"At {threads} thread(s) the fastest sparse IR ({best_sparse}, {sparse[best_sparse]:.1f} ms/token) is "
        f"{ratio:.2f}x the fastest dense weight-only one ({best_dense}, {dense[best_dense]:.1f} ms): sparsity "
        + ("pays off here" if ratio > 1 else "does not pay off here")
        + "."
    )
    lora = {k: t for k, t in sparse.items() if "lora" in k}
    if lora:
        words += (
            " With the unmerged adapter: "
            + ", ".join(f"{k} {dense[best_dense] / t:.2f}x" for k, t in lora.items())
            + f" of {best_dense}."
        )
    mb = {k: v["weight_mb_per_token"] for k, v in variants.items()}
    leanest = min(sparse, key=mb.get)
    words += (
        " At the memory bound (where more cores are expected to take decode) the weight bytes give "
        + ", ".join(f"{k} {mb[best_dense] / mb[k]:.2f}x" for k in dict.fromkeys([leanest, *lora]))
        + f" of {best_dense}."
    )
    return words


def report(run: dict, cpu: dict) -> str:
    v = run["variants"]
    lines = [
        f"{cpu['name']} (AMX: {', '.join(cpu['amx_flags']) or 'none'}), {run['threads']} thread(s), "
        f"read bandwidth {run['read_gb_s']:.1f} GB/s, GenAI, interleaved",
        f"{'IR':14s} {'TPOT ms':>8s} {'TTFT ms':>8s} {'MB/token':>9s} {'bound ms':>9s} {'x bound':>8s} "
        f"{'sparse FC':>10s}  kernels",
    ]
    for label, r in v.items():
        kernels = ", ".join(f"{re.sub(r'^brgemm_', '', k)} x{n}" for k, n in r["kernels"].items())
        lines.append(
            f"{label:14s} {r['tpot_ms']:8.2f} {r['ttft_ms']:8.1f} {r['weight_mb_per_token']:9.1f} "
            f"{r['bound_ms']:9.2f} {r['tpot_ms'] / r['bound_ms']:8.2f} "
            f"{r['sparse_fc']:>4d}/{r['fc_layers']:<5d}  {kernels}"
        )
    lines.append("")
    lines.append(f"{'check':50s} {'measured':>8s} {'at bound':>9s}  target")
    for c in run["checks"]:
        target = "(info)" if c["target"] is None else ("<= " if "cost" in c["what"] else ">= ") + f"{c['target']}"
        mark = "" if c["met"] is None else ("  MET" if c["met"] else "  NOT MET")
        if c["reachable_at_bound"] is False:
            mark += " (beyond the bytes ratio)"
        lines.append(f"{c['what']:50s} {c['value']:7.3f}x {c['at_bound']:8.3f}x  {target:>8s}{mark}")
    lines.append(run["verdict"])
    if not cpu["sparse_kernel_possible"]:
        lines.append("The sparse kernel cannot run on this CPU (no AMX): the sparse IRs ran dense int8 kernels.")
    return "\n".join(lines)


def _thread_counts(text: str) -> list[int]:
    return [os.cpu_count() if t == "all" else int(t) for t in dict.fromkeys(text.split(","))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-1b", choices=[*SIZES, "smollm2-135m"])
    p.add_argument(
        "--out", help="work folder (models and IRs are reused when already there); needed but with --reprint"
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--threads", default="1,2,all", help="comma-separated thread counts ('all' = every core)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per thread count")
    p.add_argument("--prune-method", default="magnitude", choices=["magnitude", "wanda"])
    p.add_argument(
        "--adapter-rank", type=int, default=24, help="rank of the heuristic sub-adapter (Shears: middle width)"
    )
    p.add_argument("--calibration", help="W8A8 calibration source (default: the C4 sample)")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--export-only", action="store_true", help="build and export the IRs, time nothing")
    p.add_argument(
        "--reprint",
        metavar="JSON",
        help="print the report of a saved run (its export_bench.json) again, with this script's checks; times nothing",
    )
    args = p.parse_args(argv)
    if args.reprint:
        try:
            saved = json.loads(Path(args.reprint).read_text())
        except (OSError, ValueError) as e:
            p.error(f"cannot read {args.reprint} ({e}); give the export_bench.json a run wrote")
        if not isinstance(saved, dict) or "runs" not in saved:
            p.error(f"{args.reprint} is not an export_bench.json of this script (no 'runs'); run the benchmark again")
        for run in saved["runs"]:
            run["checks"], run["verdict"] = checks(run["variants"]), verdict(run["variants"], run["threads"])
            print(report(run, saved["cpu"]) + "\n")
        return 0
    if not args.out:
        p.error("--out is required (the work folder)")
    labels = [x for x in args.variants.split(",") if x]
    unknown = [x for x in labels if x not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    threads = _thread_counts(args.threads)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    t0 = time.time()
    irs = build_irs(args, labels)
    if args.export_only:
        return 0
    cpu = cpu_info()
    runs = []
    for t in dict.fromkeys(threads):
        run = measure(irs, t, args)
        run["checks"], run["verdict"] = checks(run["variants"]), verdict(run["variants"], t)
        print(report(run, cpu) + "\n", flush=True)
        runs.append(run)
    path = Path(args.out) / "export_bench.json"
    path.write_text(
        json.dumps({"args": vars(args), "cpu": cpu, "runs": runs, "seconds": round(time.time() - t0, 1)}, indent=1)
    )
    print(f"results: {path}  ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
