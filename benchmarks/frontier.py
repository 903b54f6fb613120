"""Which model should a user deploy on an Intel CPU? The accuracy-for-speed frontier of Shears (issue #33).

Every adapter is trained on the same commonsense records (the boolq, ARC-Easy, ARC-Challenge and openbookqa
training files, pooled, the same seeded validation split carved off) in the ``answer-text`` response format
(``Question: ...\\nAnswer: <choice text>``, the form likelihood scoring reads), with one recipe, and every row is
scored by ``evaluate(..., scoring="likelihood")`` (lm-eval's acc and acc_norm, 95% Wilson intervals) on the four
test sets: torch rows on the full sets, IR rows (one sequence per choice, ~4x slower) on the first
``--ir-limit`` questions of each. Each row keeps its per-question outcomes, so the table compares rows paired,
question by question, on the questions both scored (``PAIRS``). Rows, cheapest and most informative first
(``--rows`` picks some)::

    dense/none                     dense SmolLM2, untuned (torch)
    wanda50/none                   Wanda 50%, untuned (torch)
    dense/lora/torch               dense + LoRA r32, merged (torch)
    dense/lora/int8-weights        ... exported int8 weight-only
    dense/lora/int4-awq            ... int4 weight-only, NNCF data-aware (AWQ + scale estimation, group 128 or the
                                   largest that divides a layer's inputs, asym; embedding/head int8)
    dense/lora/w8a8                ... W8A8 (the package's default export)
    wanda50/shears/torch           Wanda 50% + NLS [32,24,16] + hill-climbing sub-adapter (Shears), torch
    wanda50/shears/w8a8            ... its W8A8 IR, adapter unmerged (the deliverable)
    wanda50/shears/genai-runtime   ... base W8A8 IR + GenAI run-time adapter (speed only: GenAI returns no logits)
    wanda50/lora/torch             Wanda 50% + LoRA r32 (the paper's comparison)
    dense/fq-lora-nls/int4         NNCF int4 QAT with NLS adapters absorbed (CompressionFormat.FQ_LORA_NLS), int4 IR
    wanda50/sqft/w8a8-merged       Wanda 50% + masked NLS (SQFT) + hill-climbing, merged into a sparse W8A8 IR
    sparsegpt70/sqft/w8a8-merged   SparseGPT 70% (uniform) + masked NLS, merged, sparse W8A8 IR

Every artefact lives under ``--work`` and every finished row is written to ``--results`` at once (trainings
continue from their last checkpoint), so the study can be stopped and restarted at any point::

    nice -n 10 python benchmarks/frontier.py --work WORK --results RESULTS
    python benchmarks/frontier.py --results RESULTS --speed --pause-pid PID
    python benchmarks/frontier.py --results RESULTS --work WORK --table benchmarks/results/frontier.md

``--speed`` times every finished IR through OpenVINO GenAI, all variants interleaved in one run: TPOT of one
request at 1 and 2 threads, and generated tokens/s with 4, 16 and 64 concurrent requests (continuous batching,
prefix cache off, 32 new tokens each), with the FullyConnected kernels that ran; ``--pause-pid`` stops that
process and its children (SIGSTOP) while it measures and continues them (SIGCONT) after, so that no training
shares the cores. ``--extra-ir LABEL=IR_DIR`` adds other IR folders to the timed variants: the 1.17B random Llama
(``benchmarks/export_bench.py``), or untuned exports of a format whose tuned row has not finished (its speed is
the same: the adapter changes the weights' values, not their format). ``--table`` writes the markdown table and,
beside it, a PNG of accuracy against the weight bytes each decoded token reads (``shears_nncf.ir.weight_bytes`` of
the IR; torch rows at f32).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_table import LOG_FORMAT, SUITES, Table, log_row, nls_config, prune_config, score, trained, training_config  # noqa: E402

from shears_nncf.io import data_root, write_json  # noqa: E402

logger = logging.getLogger("frontier")

TASKS = SUITES["commonsense"][1]
TRAIN_FILES = SUITES["commonsense"][0]
IR_XML = "openvino_model.xml"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="folder for models, adapters, IRs and per-row samples")
    p.add_argument("--results", type=Path, required=True, help="JSON file the rows accumulate in")
    p.add_argument("--rows", default=None, help="comma-separated row keys (default: all, in the docstring's order)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument(
        "--max-train-samples", type=int, default=2000, help="training records per adapter (one epoch of them)"
    )
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--val-set-size", type=float, default=120)
    p.add_argument("--budget", type=int, default=30, help="configurations hill-climbing may score")
    p.add_argument("--widths", default="32,24,16")
    p.add_argument("--calibration", default=None, help="pruning calibration text (default: the C4 sample)")
    p.add_argument("--nsamples", type=int, default=32, help="pruning calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per pruning calibration window")
    p.add_argument("--export-nsamples", type=int, default=64, help="W8A8 / AWQ calibration windows (C4)")
    p.add_argument("--export-seqlen", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="torch rows: first N questions per task (default: all)")
    p.add_argument("--ir-limit", type=int, default=500, help="IR rows: first N questions per task (0: all)")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--save-steps", type=int, default=25)
    p.add_argument(
        "--fq-group-size", type=int, default=64, help="FQ_LORA_NLS int4 group size (64 divides SmolLM2's 576)"
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--speed", action="store_true", help="time the finished IRs through GenAI instead of training/scoring"
    )
    p.add_argument("--pause-pid", type=int, default=None, help="--speed: SIGSTOP this process tree while timing")
    p.add_argument("--rounds", type=int, default=5, help="--speed: interleaved rounds per measurement")
    p.add_argument(
        "--extra-ir",
        action="append",
        default=[],
        help="--speed: LABEL=IR_DIR[+ADAPTER] timed beside the rows' IRs (the 1.17B Llama, an untuned "
        "export), repeatable",
    )
    p.add_argument("--table", type=Path, default=None, help="write the markdown table here (and the PNG beside it)")
    args = p.parse_args(argv)
    # the fixed recipe, as accuracy_table spells it (its training_config / score / prune_config read these)
    args.scoring, args.eval_precision, args.bf16, args.group_by_length = "likelihood", "f32", False, True
    return args


# ------------------------------------------------------------------------------------------ helpers


def _weight_bytes_fn() -> Callable:
    """``weight_bytes`` wherever the export refactor puts it (looked up at call time)."""
    for name in ("shears_nncf.ir", "shears_nncf.inspection", "shears_nncf.quantization", "shears_nncf.exporting"):
        try:
            fn = getattr(importlib.import_module(name), "weight_bytes", None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise ImportError("no shears_nncf module defines weight_bytes")


def _ir_inputs_fn() -> Callable:
    for name in ("shears_nncf.ir", "shears_nncf.inspection", "shears_nncf.runtime_options"):
        try:
            fn = getattr(importlib.import_module(name), "ir_inputs", None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    raise ImportError("no shears_nncf module defines ir_inputs")


def ir_bytes(ir_dir: Path) -> dict:
    """Weight bytes one decoded token reads from the IR: as this machine's dense kernels read it, and as OpenVINO's
    sparse kernel would (non-zeros + a mask bit) on the pruned layers with int8 inputs, which only AMX CPUs run."""
    import openvino as ov

    weight_bytes = _weight_bytes_fn()
    model = ov.Core().read_model(ir_dir / IR_XML)
    report_file = ir_dir / "export_report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    sparsity, layers = report.get("torch_sparsity", {}), report.get("layers", {})
    sparse = {k for k, v in sparsity.items() if v >= 0.3 and layers.get(k, {}).get("activations") == "int8"}
    dense = sum(weight_bytes(model).values())
    out = {"weight_bytes_per_token": dense}
    if sparse:
        out["weight_bytes_per_token_sparse_kernel"] = sum(weight_bytes(model, sparse).values())
        out["sparse_kernel_layers"] = len(sparse)
    return out


def torch_bytes(model_dir: str) -> int:
    """f32 bytes of the Linear weights (the head included) one decoded token reads from the torch model."""
    from shears_nncf.models import model_skeleton

    skeleton = model_skeleton(model_dir, False)
    import torch.nn as nn

    return sum(4 * m.weight.numel() for m in skeleton.modules() if isinstance(m, nn.Linear))


def correct_bits(samples_file: Path) -> dict[str, str]:
    """Per task, one character per question in test-set order: "1" where the row's prediction (acc) was right."""
    data = json.loads(samples_file.read_text())
    return {
        task: "".join("1" if x["prediction"] == x["label"] else "0" for x in samples)
        for task, samples in data["samples"].items()
    }


def paired_difference(a: dict[str, str], b: dict[str, str], reps: int = 2000, seed: int = 0) -> Optional[dict]:
    """Accuracy of row ``a`` minus row ``b`` on the questions both scored (the first ``min(n_a, n_b)`` of each task):
    per task and as the unweighted mean over tasks (the table's ``mean``), with a 95% interval from a paired
    bootstrap over questions, resampled within each task."""
    import numpy as np

    tasks = [t for t in TASKS if t in a and t in b]
    if not tasks:
        return None
    rng = np.random.default_rng(seed)
    per_task, boot = {}, np.zeros(reps)
    for t in tasks:
        n = min(len(a[t]), len(b[t]))
        d = np.frombuffer(a[t][:n].encode(), np.uint8).astype(np.int8) - np.frombuffer(
            b[t][:n].encode(), np.uint8
        ).astype(np.int8)
        per_task[t] = {"n": n, "diff": float(d.mean())}
        boot += d[rng.integers(0, n, size=(reps, n))].mean(axis=1) / len(tasks)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    mean = sum(v["diff"] for v in per_task.values()) / len(tasks)
    return {"tasks": per_task, "mean": mean, "ci95": [float(lo), float(hi)]}


# (a, b, what the comparison answers): a minus b, each where both rows have been scored
PAIRS = [
    ("wanda50/shears/torch", "wanda50/lora/torch", "NLS vs LoRA on the same 50% model (the paper's claim)"),
    ("wanda50/shears/torch", "dense/lora/torch", "Shears vs dense LoRA"),
    ("wanda50/lora/torch", "dense/lora/torch", "LoRA on the 50% model vs dense LoRA"),
    ("wanda50/shears/torch", "wanda50/none", "Shears vs its untuned sparse base"),
    ("dense/lora/torch", "dense/none", "dense LoRA vs untuned dense"),
    ("wanda50/shears/w8a8", "wanda50/shears/torch", "Shears: W8A8 IR vs torch"),
    ("dense/lora/int8-weights", "dense/lora/torch", "dense LoRA: int8 weight-only IR vs torch"),
    ("dense/lora/int4-awq", "dense/lora/torch", "dense LoRA: int4 AWQ+SE IR vs torch"),
    ("dense/lora/w8a8", "dense/lora/torch", "dense LoRA: W8A8 IR vs torch"),
    ("wanda50/shears/w8a8", "dense/lora/int4-awq", "Shears W8A8 IR vs dense LoRA int4 IR (the deploy choice)"),
    ("wanda50/shears/w8a8", "dense/lora/int8-weights", "Shears W8A8 IR vs dense LoRA int8 weight-only IR"),
    ("dense/fq-lora-nls/int4", "dense/lora/int4-awq", "NNCF int4 QAT + NLS vs dense LoRA then int4 AWQ+SE"),
    ("wanda50/shears/w8a8", "dense/fq-lora-nls/int4", "Shears W8A8 IR vs NNCF int4 QAT + NLS IR"),
    ("wanda50/sqft/w8a8-merged", "wanda50/shears/w8a8", "SQFT merged vs Shears unmerged (both W8A8 IRs)"),
]


def _stop_tree(pid: int, sig: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in procs]


# ------------------------------------------------------------------------------------------ NNCF int4 QAT + NLS


def _lora_quantizers(model) -> dict[int, list]:
    """The int4 weight quantizers with absorbable LoRA of ``compress_weights(..., FQ_LORA_NLS)``, by decoder block."""
    import re

    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import AsymmetricLoraNLSQuantizer, SymmetricLoraNLSQuantizer

    blocks: dict[int, list] = {}
    for name, module in get_hook_storage(model).named_hooks():
        if isinstance(module, (AsymmetricLoraNLSQuantizer, SymmetricLoraNLSQuantizer)) and module.num_bits == 4:
            block = re.search(r"layers[:.](\d+)[:.]", name)
            blocks.setdefault(int(block.group(1)) if block else -1, []).append(module)
    return blocks


def train_fq_lora_nls(model_name: str, out: Path, tcfg, widths: list[int], group_size: int = 64) -> dict:
    """NNCF's int4 quantization-aware training with NLS adapters absorbed into the int4 weights, on the study's
    records, then an int4 OpenVINO IR of the median sub-adapter (NNCF's example picks among heuristics; the
    median is its first). Our recipe where NNCF's has a choice: the same records, response-only loss, learning
    rate (scales at a tenth of it, as NNCF's example), batch, warm-up, linear decay, f32; one rank per decoder
    block sampled each optimizer step. int4 asymmetric (NNCF's QAT default) in groups of 64, the largest that
    divides SmolLM2's 576 inputs; embedding and head int8 by NNCF's rule. A run killed before its end starts again.
    """
    import random

    import nncf
    import torch
    from transformers import DataCollatorForSeq2Seq, get_linear_schedule_with_warmup

    from shears_nncf.datasets import load_instruction_data, tokenize_records
    from shears_nncf.models import load_model, load_tokenizer

    torch.manual_seed(tcfg.seed)
    rng = random.Random(tcfg.seed)
    train_records, val_records = load_instruction_data(
        tcfg.data, tcfg.val_set_size, tcfg.seed, tcfg.max_train_samples, tcfg.response_format
    )
    tokenizer = load_tokenizer(model_name)
    dataset = tokenize_records(train_records, tokenizer, tcfg.cutoff_len, tcfg.train_on_inputs)
    model = load_model(model_name)
    model.config.use_cache = False
    example = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    model = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT4_ASYM,
        group_size=group_size,
        compression_format=nncf.CompressionFormat.FQ_LORA_NLS,
        dataset=nncf.Dataset([example]),
        advanced_parameters=nncf.AdvancedCompressionParameters(lora_adapter_rank=max(widths)),
    )
    blocks = _lora_quantizers(model)
    model.requires_grad_(False)
    adapters, scales = [], []
    for q in (q for qs in blocks.values() for q in qs):
        q.enable_gradients()
        own = q.get_adapters()
        adapters += list(own.values())
        scales += [p for name, p in q.get_trainable_params().items() if name not in own]
    opt = torch.optim.AdamW(
        [{"params": adapters, "lr": tcfg.learning_rate}, {"params": scales, "lr": tcfg.learning_rate / 10}],
        weight_decay=tcfg.weight_decay,
    )
    micro, accum = tcfg.micro_batch, tcfg.accumulation_steps
    order = list(range(len(dataset)))
    rng.shuffle(order)
    steps = len(order) // tcfg.batch_size
    sched = get_linear_schedule_with_warmup(opt, tcfg.warmup_steps, steps)
    collate = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True, return_tensors="pt")
    model.train()
    curve, t0 = [], time.perf_counter()
    for step in range(steps):
        for qs in blocks.values():  # NLS: one rank per block for this step
            rank = rng.choice(widths)
            for q in qs:
                q.set_active_rank(rank)
        total = 0.0
        for m in range(accum):
            ids = order[step * tcfg.batch_size + m * micro : step * tcfg.batch_size + (m + 1) * micro]
            batch = collate([dataset[i] for i in ids])
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise RuntimeError(f"FQ_LORA_NLS training loss is {loss.item()} at step {step}")
            (loss / accum).backward()
            total += loss.item() / accum
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % tcfg.logging_steps == 0 or step == steps - 1:
            curve.append({"step": step + 1, "loss": total})
            logger.info("FQ_LORA_NLS step %d/%d loss %.4f", step + 1, steps, total)
    seconds = time.perf_counter() - t0
    median = widths[(len(widths) - 1) // 2]
    for qs in blocks.values():
        for q in qs:
            q.set_active_rank(median)
    model.eval()
    with torch.no_grad():
        stripped = nncf.strip(model, do_copy=False, strip_format=nncf.StripFormat.DQ)
        from optimum.exporters.openvino.convert import export_from_model

        tmp = out.with_name(out.name + ".tmp")
        export_from_model(stripped, tmp, device="cpu")
    report = {
        "train_records": len(train_records),
        "validation_records": len(val_records),
        "global_step": steps,
        "train_seconds": round(seconds, 1),
        "train_loss": sum(c["loss"] for c in curve) / max(len(curve), 1),
        "loss_curve": curve,
        "sub_adapter": {"rank": median, "blocks": len(blocks)},
        "compression": {
            "mode": "int4_asym",
            "group_size": group_size,
            "format": "FQ_LORA_NLS",
            "lora_adapter_rank": max(widths),
            "widths": widths,
        },
    }
    write_json(tmp / "fq_training_report.json", report)
    return report


def _fq_child(model_name: str, out: Path, tcfg, widths: list[int], group_size: int) -> None:
    logging.basicConfig(**LOG_FORMAT)
    # NNCF compiles its CPU fake-quantize extension on first use, which takes minutes on 2 busy cores: no time limit
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    train_fq_lora_nls(model_name, out, tcfg, widths, group_size)


# ------------------------------------------------------------------------------------------ the study


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        root = args.data_root or data_root()
        os.environ["SHEARS_NNCF_DATA"] = str(root)  # the test sets the scorer reads come from the same root
        self.data = [str(root / f) for f in TRAIN_FILES]
        for f in self.data:
            if not Path(f).is_file():
                raise SystemExit(f"frontier: training file {f} does not exist; pass --data-root")
        self.widths = sorted((int(w) for w in args.widths.split(",")), reverse=True)
        base = training_config(args, self.data, gpu=False)
        self.tcfg = dataclasses.replace(base, max_train_samples=args.max_train_samples, response_format="answer-text")
        names = [f"{Path(f).parent.name}/{Path(f).name}" for f in self.data]
        self.settings = {
            "model": args.model,
            "train_data": names,
            "tasks": TASKS,
            "response_format": "answer-text",
            "max_train_samples": args.max_train_samples,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
            "batch_size": args.batch_size,
            "val_set_size": args.val_set_size,
            "widths": self.widths,
            "budget": args.budget,
            "pruning": {"nsamples": args.nsamples, "seqlen": args.seqlen},
            "export_calibration": {"nsamples": args.export_nsamples, "seqlen": args.export_seqlen},
            "limit": args.limit,
            "ir_limit": args.ir_limit,
            "seed": args.seed,
            "scoring": "likelihood",
            "precision": "f32",
            "group_by_length": True,
        }
        self.table = Table(args.results, self.settings)
        self.work = args.work

    # -- artefacts, each made once

    def sparse(self, key: str) -> str:
        if key == "dense":
            return self.args.model
        method, level = {"wanda50": ("wanda", 0.5), "sparsegpt70": ("sparsegpt", 0.7)}[key]
        out = self.work / "sparse" / key
        if not (out / "config.json").is_file():
            from shears_nncf.pruning import prune

            prune(self.args.model, out, prune_config(method, level, self.args))
        return str(out)

    def adapter(self, base: str, kind: str) -> tuple[Path, dict]:
        """A trained adapter: ``lora`` (one rank), ``nls`` (elastic ranks) or ``sqft`` (elastic, masked)."""
        nls = nls_config(self.widths[:1] if kind == "lora" else self.widths)
        if kind == "sqft":
            nls = dataclasses.replace(nls, sparse_adapter=True)
        out = self.work / base / kind
        return out, trained(self.sparse(base), out, nls, self.tcfg)

    def hill_climbing(self, base: str, kind: str) -> tuple[Path, dict]:
        from shears_nncf.config import SearchConfig
        from shears_nncf.selection import search

        super_dir, rep = self.adapter(base, kind)
        out = self.work / base / f"{kind}_hill-climbing"
        if not (out / "search_report.json").is_file():
            cfg = SearchConfig(
                strategy="hill-climbing", eval="loss", budget=self.args.budget, seed=self.args.seed, batch_size=16
            )
            search(self.sparse(base), super_dir, out, cfg)
        return out, rep

    def merged(self, base: str, kind: str) -> Path:
        """The dense LoRA merged into the model: an HF folder, the source of the dense exports."""
        out = self.work / base / f"{kind}_merged"
        if (out / "config.json").is_file():
            return out
        import torch

        from shears_nncf.adapters import load_adapter
        from shears_nncf.models import load_model, load_tokenizer

        adapter, _ = self.adapter(base, kind)
        model_dir = self.sparse(base)
        with torch.no_grad():
            model = load_adapter(load_model(model_dir), str(adapter)).merge_and_unload()
        tmp = out.with_name(out.name + ".tmp")
        model.save_pretrained(tmp)
        load_tokenizer(model_dir).save_pretrained(tmp)
        os.replace(tmp, out)
        return out

    def export(self, name: str, model: str, adapter: Optional[Path] = None, **config) -> Path:
        out = self.work / "ir" / name
        if not (out / IR_XML).is_file():
            from shears_nncf.config import ExportConfig
            from shears_nncf.exporting import export

            export(
                model,
                out,
                adapter=str(adapter) if adapter else None,
                config=ExportConfig(nsamples=self.args.export_nsamples, seqlen=self.args.export_seqlen, **config),
            )
        return out

    def int4_awq(self, name: str, model: str) -> Path:
        """Dense int4 weight-only as ``optimum-cli --weight-format int4 --awq --scale-estimation --group-size 128
        --ratio 1.0`` makes it (asymmetric, embedding and head int8), data-aware on the W8A8 export's C4 windows:
        the package's f32 export, then NNCF on the IR."""
        out = self.work / "ir" / name
        if (out / IR_XML).is_file():
            return out
        import nncf
        import openvino as ov

        from shears_nncf.calibration import as_nncf_dataset
        from shears_nncf.models import load_tokenizer

        f32 = self.export(f"{name}.f32", model, quantize="none")
        ir_inputs = _ir_inputs_fn()
        dataset = as_nncf_dataset(
            load_tokenizer(model),
            None,
            self.args.export_nsamples,
            self.args.export_seqlen,
            0,
            transform_fn=lambda ids: ir_inputs(ids.numpy()),
        )
        ir = ov.Core().read_model(f32 / IR_XML)
        t0 = time.perf_counter()
        ir = nncf.compress_weights(
            ir,
            mode=nncf.CompressWeightsMode.INT4_ASYM,
            group_size=128,
            ratio=1.0,
            dataset=dataset,
            awq=True,
            scale_estimation=True,
            subset_size=self.args.export_nsamples,
            # SmolLM2's 576 inputs are no multiple of 128: those layers take the largest group
            # size that divides (64), as the package's int4 export does, instead of int8
            advanced_parameters=nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST
            ),
        )
        seconds = time.perf_counter() - t0
        tmp = out.with_name(out.name + ".tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for f in f32.iterdir():
            if f.is_file() and not f.name.startswith("openvino_model."):
                (tmp / f.name).write_bytes(f.read_bytes())
        ov.save_model(ir, tmp / IR_XML, compress_to_fp16=False)
        report = json.loads((tmp / "export_report.json").read_text()) if (tmp / "export_report.json").is_file() else {}
        report.update(
            {
                "quantize": "int4-awq",
                "precision": "int4 asym weights (AWQ + scale estimation, group 128), embedding/head int8",
                "awq_seconds": round(seconds, 1),
            }
        )
        write_json(tmp / "export_report.json", report)
        os.replace(tmp, out)
        return out

    def fq_lora_nls(self, name: str) -> tuple[Path, dict]:
        """The int4 IR of NNCF's QAT + NLS (trained in a child process), with the package's tokenizer files and the
        run-time options every other IR stores (f32 inference, f16 KV cache)."""
        out = self.work / "ir" / name
        if not (out / IR_XML).is_file():
            import multiprocessing
            import shutil

            import openvino as ov

            f32 = self.export("dense.f32", self.args.model, quantize="none")  # tokenizer files, OpenVINO's included
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            child = multiprocessing.get_context("spawn").Process(
                target=_fq_child, args=(self.args.model, out, self.tcfg, self.widths, self.args.fq_group_size)
            )
            child.start()
            child.join()
            if child.exitcode:
                raise SystemExit(f"frontier: FQ_LORA_NLS training failed (exit code {child.exitcode}); rerun to retry")
            ir = ov.Core().read_model(tmp / IR_XML)
            ir.set_rt_info("f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
            ir.set_rt_info("f16", ["runtime_options", "KV_CACHE_PRECISION"])
            ov.save_model(ir, tmp / "staged.xml", compress_to_fp16=False)
            del ir
            os.replace(tmp / "staged.xml", tmp / IR_XML)
            os.replace(tmp / "staged.bin", tmp / "openvino_model.bin")
            for f in f32.iterdir():
                if f.is_file() and not f.name.startswith("openvino_model.") and not (tmp / f.name).exists():
                    shutil.copy(f, tmp / f.name)
            precision = (
                f"int4 asym weights (QAT, NLS adapters absorbed), group {self.args.fq_group_size}, embedding/head int8"
            )
            write_json(
                tmp / "export_report.json",
                {"model": self.args.model, "quantize": "int4-fq-lora-nls", "precision": precision},
            )
            os.replace(tmp, out)
        return out, json.loads((out / "fq_training_report.json").read_text())

    # -- rows

    def samples(self, key: str) -> Path:
        """The per-question samples file of a row (``score`` writes it)."""
        return self.work / "samples" / f"{key.replace('/', '_')}.json"

    def torch_row(self, key: str, model: str, adapter: Optional[Path], **extra) -> dict:
        row = score(model, adapter, TASKS, self.args, self.samples(key))
        return {
            "runtime": "torch f32",
            "model": model,
            "adapter": str(adapter) if adapter else None,
            "weight_bytes_per_token": torch_bytes(model),
            **extra,
            **row,
            "correct": correct_bits(self.samples(key)),
        }

    def ir_row(self, key: str, model: str, ir: Path, **extra) -> dict:
        args = argparse.Namespace(**{**vars(self.args), "limit": self.args.ir_limit or None})
        row = score(model, None, TASKS, args, self.samples(key), ir=ir)
        out = {"runtime": "OpenVINO IR (infer request)", "model": model, "ir": str(ir), **ir_bytes(ir), **extra, **row}
        out["correct"] = correct_bits(self.samples(key))
        return out

    def rows(self) -> dict[str, tuple[str, Callable[[str], dict]]]:
        def trained_info(rep: dict) -> dict:
            return {
                "train_records": rep.get("data", {}).get("train_records", rep.get("train_records")),
                "train_records_seen": (rep.get("global_step") or 0) * self.args.batch_size,
                "train_steps": rep.get("global_step"),
                "train_seconds": rep.get("train_seconds"),
                "train_loss": rep.get("train_loss"),
            }

        def dense_none(key):
            return self.torch_row(key, self.args.model, None, train_records_seen=0)

        def wanda_none(key):
            return self.torch_row(key, self.sparse("wanda50"), None, train_records_seen=0)

        def dense_lora(key):
            adapter, rep = self.adapter("dense", "lora")
            return self.torch_row(key, self.args.model, adapter, **trained_info(rep))

        def dense_export(quantize):
            def build(key):
                _, rep = self.adapter("dense", "lora")
                merged = self.merged("dense", "lora")
                name = f"dense_lora_{quantize}"
                if quantize == "int4-awq":
                    ir = self.int4_awq(name, str(merged))
                else:
                    ir = self.export(name, str(merged), quantize=quantize)
                return self.ir_row(key, str(merged), ir, **trained_info(rep))

            return build

        def shears_torch(key):
            sub, rep = self.hill_climbing("wanda50", "nls")
            search_rep = json.loads((sub / "search_report.json").read_text())
            return self.torch_row(
                key,
                self.sparse("wanda50"),
                sub,
                config=search_rep["chosen"].get("config"),
                adapter_params=search_rep["chosen"].get("adapter_params"),
                **trained_info(rep),
            )

        def shears_w8a8(key):
            sub, rep = self.hill_climbing("wanda50", "nls")
            ir = self.export("wanda50_shears_w8a8", self.sparse("wanda50"), sub, quantize="w8a8")
            return self.ir_row(key, self.sparse("wanda50"), ir, **trained_info(rep))

        def shears_runtime(key):
            sub, rep = self.hill_climbing("wanda50", "nls")
            ir = self.export(
                "wanda50_shears_runtime", self.sparse("wanda50"), sub, quantize="w8a8", adapter_mode="runtime"
            )
            return {
                "runtime": "OpenVINO GenAI, run-time adapter",
                "model": self.sparse("wanda50"),
                "ir": str(ir),
                "genai_adapter": sub.name,
                "tasks": {},
                "mean": None,
                **ir_bytes(ir),
                **trained_info(rep),
                "note": "speed only: GenAI returns no logits to score choices with; the function is the in-IR "
                "row's (tests/test_genai.py)",
            }

        def wanda_lora(key):
            adapter, rep = self.adapter("wanda50", "lora")
            return self.torch_row(key, self.sparse("wanda50"), adapter, **trained_info(rep))

        def fq_lora_nls(key):
            ir, rep = self.fq_lora_nls("dense_fq_lora_nls_int4")
            return self.ir_row(key, self.args.model, ir, **trained_info(rep), sub_adapter=rep.get("sub_adapter"))

        def sqft(base):
            def build(key):
                sub, rep = self.hill_climbing(base, "sqft")
                ir = self.export(f"{base}_sqft_w8a8_merged", self.sparse(base), sub, quantize="w8a8", merge=True)
                return self.ir_row(key, self.sparse(base), ir, **trained_info(rep))

            return build

        return {
            "dense/none": ("dense, untuned", dense_none),
            "wanda50/none": ("Wanda 50%, untuned", wanda_none),
            "dense/lora/torch": ("dense + LoRA (merged)", dense_lora),
            "dense/lora/int8-weights": ("dense + LoRA, int8 weight-only IR", dense_export("int8-weights")),
            "dense/lora/int4-awq": ("dense + LoRA, int4 AWQ+SE IR", dense_export("int4-awq")),
            "dense/lora/w8a8": ("dense + LoRA, W8A8 IR", dense_export("w8a8")),
            "wanda50/shears/torch": ("Wanda 50% + Shears (NLS, hill-climbing)", shears_torch),
            "wanda50/shears/w8a8": ("Wanda 50% + Shears, W8A8 IR (unmerged)", shears_w8a8),
            "wanda50/shears/genai-runtime": ("Wanda 50% + Shears, GenAI run-time adapter", shears_runtime),
            "wanda50/lora/torch": ("Wanda 50% + LoRA", wanda_lora),
            "dense/fq-lora-nls/int4": ("dense, NNCF int4 QAT + NLS (FQ_LORA_NLS) IR", fq_lora_nls),
            "wanda50/sqft/w8a8-merged": ("Wanda 50% + SQFT (masked NLS), merged sparse W8A8 IR", sqft("wanda50")),
            "sparsegpt70/sqft/w8a8-merged": ("SparseGPT 70% + SQFT, merged sparse W8A8 IR", sqft("sparsegpt70")),
        }

    def run(self) -> dict:
        rows = self.rows()
        wanted = [k.strip() for k in self.args.rows.split(",")] if self.args.rows else list(rows)
        if bad := [k for k in wanted if k not in rows]:
            raise SystemExit(f"frontier: unknown row(s) {bad}; rows are {', '.join(rows)}")
        for key in wanted:
            if self.table.has(key):
                logger.info("%s: in %s already", key, self.args.results)
                continue
            label, build = rows[key]
            logger.info("%s: building", key)
            t0 = time.perf_counter()
            row = build(key)
            row.update({"label": label, "row_seconds": round(time.perf_counter() - t0, 1)})
            self.table.add(key, row)
            if row.get("tasks"):
                log_row(key, row)
        return self.table.data


# ------------------------------------------------------------------------------------------ speed


def _throughput(model, prompt_ids, concurrency: int, new_tokens: int, adapter: Optional[str]) -> float:
    """Generated tokens/s of ``concurrency`` requests given to GenAI's continuous batching at once."""
    import numpy as np
    import openvino as ov
    import openvino_genai as og

    config = model.pipe.get_generation_config()
    config.max_new_tokens, config.min_new_tokens, config.ignore_eos = new_tokens, new_tokens, True
    config.do_sample, config.num_beams = False, 1
    arr = np.repeat(prompt_ids, concurrency, axis=0)
    arr[:, 0] = np.arange(concurrency) + 3  # distinct requests (the prefix cache is off anyway)
    inputs = og.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))
    start = time.perf_counter()
    result = model.pipe.generate(inputs, config, adapters=model.adapter_config(adapter))
    seconds = time.perf_counter() - start
    return sum(len(t) for t in result.tokens) / seconds


def speed(args: argparse.Namespace) -> dict:
    """TPOT at batch 1 (1 and 2 threads) and tokens/s at 4/16/64 concurrent requests of every finished IR."""
    import numpy as np
    from decode_bench import interleaved

    from shears_nncf.genai import load_pipeline

    data = json.loads(args.results.read_text())
    variants = {}
    for key, row in data["rows"].items():
        if row.get("ir"):
            spec = row["ir"] + (f"+{row['genai_adapter']}" if row.get("genai_adapter") else "")
            variants[key] = spec
    for item in args.extra_ir:
        label, _, ir = item.partition("=")
        variants[f"extra/{label}"] = ir
    if not variants:
        raise SystemExit(f"frontier: {args.results} has no IR row to time yet")
    paused = _stop_tree(args.pause_pid, signal.SIGSTOP) if args.pause_pid else []
    if paused:
        logger.info("paused %s while timing", paused)
    out: dict = {"machine": None, "rounds": args.rounds, "new_tokens": 32, "prompt_len": 32, "variants": {}}
    try:
        from shears_nncf.benchmarking import cpu_info

        out["machine"] = cpu_info()
        for threads in (1, 2):
            res = interleaved(
                [f"{k}=genai:{v}" for k, v in variants.items()], threads=threads, rounds=args.rounds, runtime="genai"
            )
            for k, r in res.items():
                v = out["variants"].setdefault(k, {"ir": variants[k]})
                v[f"tpot_ms_{threads}t"] = r["tpot_ms"]
                v[f"ttft_ms_{threads}t"] = r["ttft_ms"]
                v["kernels"], v["ran"] = r["kernels"], r["ran"]
        models = {}
        for k, spec in variants.items():
            ir, _, adapter = spec.partition("+")
            models[k] = (load_pipeline(ir, [adapter] if adapter else []), adapter or None)
        prompt = np.random.default_rng(0).integers(3, 40000, size=(1, 32), dtype=np.int64)
        for n in (4, 16, 64):
            figures = {k: [] for k in models}
            for k, (m, a) in models.items():
                _throughput(m, prompt, n, 8, a)  # warm-up at this concurrency
            for rnd in range(max(1, args.rounds // 2)):
                for k in list(models) if rnd % 2 == 0 else list(models)[::-1]:
                    m, a = models[k]
                    figures[k].append(_throughput(m, prompt, n, 32, a))
            for k, f in figures.items():
                out["variants"][k][f"tokens_per_s_{n}"] = statistics.median(f)
            logger.info("concurrency %d: %s", n, {k: round(statistics.median(f), 1) for k, f in figures.items()})
    finally:
        if paused:
            _stop_tree(args.pause_pid, signal.SIGCONT)
            logger.info("continued %s", paused)
    data = json.loads(args.results.read_text())  # the study may have added rows meanwhile
    data["speed"] = out
    tmp = args.results.with_suffix(".tmp")
    write_json(tmp, data)
    os.replace(tmp, args.results)
    return out


# ------------------------------------------------------------------------------------------ table


def _pct(r: dict, metric: str = "accuracy") -> str:
    ci = "acc_norm_ci95" if metric == "acc_norm" else "acc_ci95"
    lo, hi = r[ci]
    return f"{100 * r[metric]:.1f} ± {50 * (hi - lo):.1f}"


def markdown(data: dict) -> str:
    speed_rows = (data.get("speed") or {}).get("variants", {})
    lines = [
        "| row | runtime | " + " | ".join(TASKS) + " | mean | MB/token | records seen | TPOT 1t / 2t ms | "
        "tok/s @4 / 16 / 64 | kernels |",
        "| --- " * (len(TASKS) + 8) + "|",
    ]
    for key, r in data["rows"].items():
        full = {
            t: max((x["tasks"][t]["total"] for x in data["rows"].values() if t in x.get("tasks", {})), default=0)
            for t in TASKS
        }
        cells = [
            (_pct(r["tasks"][t]) + (f" (n={r['tasks'][t]['total']})" if r["tasks"][t]["total"] < full[t] else ""))
            if t in r.get("tasks", {})
            else "-"
            for t in TASKS
        ]
        mean = f"{100 * r['mean']:.1f}" if r.get("mean") is not None else "-"
        mb = r.get("weight_bytes_per_token")
        mb_cell = f"{mb / 1e6:.1f}" if mb else "-"
        if r.get("weight_bytes_per_token_sparse_kernel"):
            mb_cell += f" ({r['weight_bytes_per_token_sparse_kernel'] / 1e6:.1f} sparse kernel)"
        s = speed_rows.get(key, {})
        tpot = f"{s['tpot_ms_1t']:.1f} / {s['tpot_ms_2t']:.1f}" if "tpot_ms_2t" in s else "-"
        tps = " / ".join(f"{s[f'tokens_per_s_{n}']:.0f}" for n in (4, 16, 64)) if "tokens_per_s_64" in s else "-"
        kernels = ", ".join(f"{k} {v}" for k, v in s.get("kernels", {}).items()) or "-"
        lines.append(
            f"| {r.get('label', key)} | {r.get('runtime', '')} | "
            + " | ".join(cells)
            + f" | {mean} | {mb_cell} | {r.get('train_records_seen', 0)} | {tpot} | {tps} | {kernels} |"
        )
    st = data["settings"]
    lines += [
        "",
        "Likelihood scoring (lm-eval acc), % ± half the 95% Wilson interval; torch rows on the full test "
        "sets, "
        f"IR rows on the first {st.get('ir_limit') or 'all'} questions per task (n shown). Adapters trained on "
        f"{st['max_train_samples']} records of {', '.join(st['train_data'])} (answer-text format), "
        f"lr {st['lr']}, batch {st['batch_size']}, {st['epochs']} epoch(s), f32. MB/token: weight bytes each "
        "decoded "
        "token reads (IR: as this machine's dense kernels read them; in brackets as OpenVINO's sparse kernel "
        "would, AMX CPUs only; torch rows: f32 Linear weights)."
        + (
            " Speed: OpenVINO GenAI, 32-token random prompts, 32 new tokens, prefix cache off, variants interleaved."
            if speed_rows
            else " Speed: not measured yet (--speed)."
        ),
    ]
    extra = {k: v for k, v in speed_rows.items() if k not in data["rows"]}
    if extra:
        lines += [
            "",
            "Other IRs timed in the same run (untuned exports: a format's speed, whatever its weights):",
            "",
            "| IR | TPOT 1t / 2t ms | tok/s @4 / 16 / 64 | kernels |",
            "| --- | --- | --- | --- |",
        ]
        for k, s in extra.items():
            tpot = f"{s['tpot_ms_1t']:.1f} / {s['tpot_ms_2t']:.1f}" if "tpot_ms_2t" in s else "-"
            tps = " / ".join(f"{s[f'tokens_per_s_{n}']:.0f}" for n in (4, 16, 64)) if "tokens_per_s_64" in s else "-"
            kernels = ", ".join(f"{a} {b}" for a, b in s.get("kernels", {}).items()) or "-"
            lines.append(f"| {k.removeprefix('extra/')} | {tpot} | {tps} | {kernels} |")
    if data.get("speed", {}).get("machine"):
        m = data["speed"]["machine"]
        kernel = "possible" if m.get("sparse_kernel_possible") else "not available"
        lines += [
            "",
            f"Speed machine: {m.get('name')}, {m.get('cores')} cores, AMX {m.get('amx_flags') or 'none'} "
            f"(OpenVINO's sparse-weights kernel {kernel}).",
        ]
    rows = data["rows"]
    diffs = [
        (label, a, b, d)
        for a, b, label in PAIRS
        if a in rows and b in rows and (d := paired_difference(rows[a].get("correct", {}), rows[b].get("correct", {})))
    ]
    if diffs:
        lines += [
            "",
            "Paired differences (row a minus row b, accuracy points, on the questions both scored; 95% interval of "
            "the mean by a paired bootstrap; *tie* where it holds 0):",
            "",
            "| comparison | a | b | " + " | ".join(TASKS) + " | mean [95% CI] | |",
            "| --- " * (len(TASKS) + 5) + "|",
        ]
        for label, a, b, d in diffs:
            cells = [f"{100 * v['diff']:+.1f} (n={v['n']})" if (v := d["tasks"].get(t)) else "-" for t in TASKS]
            lo, hi = d["ci95"]
            word = "tie" if lo <= 0 <= hi else ("a higher" if lo > 0 else "a lower")
            lines.append(
                f"| {label} | {a} | {b} | " + " | ".join(cells) + f" | {100 * d['mean']:+.1f} "
                f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {word} |"
            )
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, r in data["rows"].items():
        if r.get("mean") is None or not r.get("weight_bytes_per_token"):
            continue
        x = r["weight_bytes_per_token"] / 1e6
        marker = "s" if r.get("runtime", "").startswith("torch") else "o"
        ax.scatter([x], [100 * r["mean"]], marker=marker)
        ax.annotate(r.get("label", key), (x, 100 * r["mean"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
        if r.get("weight_bytes_per_token_sparse_kernel"):
            xs = r["weight_bytes_per_token_sparse_kernel"] / 1e6
            ax.scatter([xs], [100 * r["mean"]], marker="o", facecolors="none", edgecolors="gray")
            ax.plot([xs, x], [100 * r["mean"]] * 2, color="gray", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("weight MB read per decoded token (log; hollow: with OpenVINO's sparse kernel, AMX only)")
    ax.set_ylabel("mean acc over boolq, ARC-E, ARC-C, OBQA (%)")
    ax.set_title("SmolLM2-135M: accuracy vs bytes per token (squares: torch f32)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict:
    logging.basicConfig(**LOG_FORMAT)
    args = parse_args(argv)
    if args.table:
        data = json.loads(args.results.read_text())
        if args.work:  # rows scored before the results kept per-question outcomes get them from their samples
            missing = {k for k, r in data["rows"].items() if r.get("tasks") and "correct" not in r}
            for key in missing:
                f = args.work / "samples" / f"{key.replace('/', '_')}.json"
                if f.is_file():
                    data["rows"][key]["correct"] = correct_bits(f)
            if missing:
                tmp = args.results.with_suffix(".tmp")
                write_json(tmp, data)
                os.replace(tmp, args.results)
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(markdown(data) + "\n")
        plot(data, args.table.with_suffix(".png"))
        logger.info("wrote %s and %s", args.table, args.table.with_suffix(".png"))
        return data
    if args.speed:
        return speed(args)
    if args.work is None:
        raise SystemExit("frontier: pass --work (the folder for models, adapters and IRs)")
    return Study(args).run()


if __name__ == "__main__":
    main(sys.argv[1:])
