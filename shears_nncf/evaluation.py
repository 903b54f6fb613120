"""Accuracy on LLM-Adapters tasks (and wikitext-2 perplexity) of a torch model (+ PEFT adapter) or an OpenVINO IR.

Scoring goes through :func:`shears_nncf.tasks.score_task` with a generate function, so any model object with a
Hugging Face ``.generate`` plugs in: the torch model, its ``PeftModel``, or the IR's ``OVModelForCausalLM``
(compiled with the sparse rate stored in the IR, as :func:`shears_nncf.ir.ov_config` reads it).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from .adapters import check_adapter_matches, load_adapter
from .config import EvalConfig
from .elastic import ELASTIC_CONFIG_NAME
from .errors import ShearsError
from .io import check_output_file, write_json
from .likelihood import ir_loglik_fn, parse_question, score_likelihood, torch_loglik_fn
from .models import load_model, load_tokenizer, model_skeleton, resolve_device
from .reports import EvalReport
from .tasks import TaskSpec, load_test_records, make_generate_fn, parse_task_specs, score_task

logger = logging.getLogger(__name__)

PERPLEXITY_TASKS = ("wikitext2",)
_TORCH_PRECISION = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.float16": "f16"}


def parse_eval_tasks(tasks: Union[str, Sequence[str]]) -> list[Union[str, TaskSpec]]:
    """Task specs in the order given; ``wikitext2`` stays a name (it is a perplexity, not an accuracy)."""
    items = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not items:
        raise ShearsError("no task given; pass --tasks with e.g. gsm8k,ARC-Easy or wikitext2")
    out: list[Union[str, TaskSpec]] = []
    for item in items:
        out.append(item.lower() if item.lower() in PERPLEXITY_TASKS else parse_task_specs([item])[0])
    return out


def _load(
    model: str, adapter: Optional[str], trust_remote_code: bool, device: str = "cpu", precision: Optional[str] = None
):
    if adapter is not None:  # before the model is loaded: a wrong or broken adapter fails at once
        check_adapter_matches(model_skeleton(model, trust_remote_code), adapter)
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # default / f32: the weights as trained
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    if adapter is None:
        return load_model(model, dtype=dtype, trust_remote_code=trust_remote_code, device=device), tokenizer

    if (Path(adapter) / ELASTIC_CONFIG_NAME).is_file():
        logger.info("%s is a super-adapter: evaluating its maximal configuration", adapter)
    # Merged in f32, then cast: the function the unmerged adapter computes, at the base model's speed (an unmerged
    # LoRA costs every scored question its extra MatMuls); the IR keeps its adapter unmerged.
    base = load_model(model, trust_remote_code=trust_remote_code)
    with torch.no_grad():
        merged = load_adapter(base, adapter).merge_and_unload()
    return merged.to(device=device, dtype=dtype).eval(), tokenizer


def _ir_tokenizer(ir: str, model: str, trust_remote_code: bool):
    """The tokenizer saved with the IR, else the model's."""
    source = ir if (Path(ir) / "tokenizer_config.json").is_file() else model
    return load_tokenizer(str(source), trust_remote_code=trust_remote_code)


def _load_ir(ir: str, model: str, trust_remote_code: bool, precision: Optional[str] = None):
    """The exported IR (its adapter is inside it) compiled with its stored options, its tokenizer and precision."""
    from optimum.intel import OVModelForCausalLM

    from .kernel_guard import check_first_inference
    from .runtime_options import compiled_precision, ov_config

    options = ov_config(ir, precision)
    check_first_inference(ir, options)  # a crash in OpenVINO becomes an error line
    tokenizer = _ir_tokenizer(ir, model, trust_remote_code)
    net = OVModelForCausalLM.from_pretrained(str(ir), ov_config=options, trust_remote_code=trust_remote_code)
    return net, tokenizer, compiled_precision(net.request.get_compiled_model())


def _load_genai(ir: str, model: str, adapter: Optional[str], trust_remote_code: bool, precision: Optional[str]):
    """OpenVINO GenAI's LLMPipeline on the IR (``adapter`` applied at run time), the tokenizer, and the precision."""
    from .genai import load_pipeline

    tokenizer = _ir_tokenizer(ir, model, trust_remote_code)
    pipe = load_pipeline(ir, [adapter] if adapter else [], precision)
    return pipe, tokenizer, pipe.properties.get("INFERENCE_PRECISION_HINT", "default")


def _genai_generate_fn(pipe, tokenizer, max_new_tokens: int):
    """Greedy generation on the pipeline, prompts tokenized by the model's Hugging Face tokenizer, so that GenAI and
    torch see the same token ids; one prompt at a time (GenAI's stateful CPU path)."""
    name = next(iter(pipe.adapters), None)

    def generate(prompts: list[str]) -> list[str]:
        outs = [
            pipe.generate_ids(tokenizer(p).input_ids, max_new_tokens, name, tokenizer.eos_token_id).tokens
            for p in prompts
        ]
        return tokenizer.batch_decode(outs, skip_special_tokens=True)

    return generate


def _wikitext2(model, tokenizer, limit: Optional[int]) -> dict:
    from .perplexity import perplexity, wikitext2_test_file

    seqlen = min(2048, getattr(model.config, "max_position_embeddings", 2048) or 2048)
    start = time.perf_counter()
    ppl = perplexity(model, tokenizer, wikitext2_test_file(), seqlen=seqlen, max_windows=limit)
    return {
        "task": "wikitext2",
        "perplexity": ppl,
        "seqlen": seqlen,
        "windows": limit,
        "seconds": time.perf_counter() - start,
    }


def format_report(results: EvalReport) -> str:
    rows = [("task", "metric", "value", "n", "seconds")]
    for r in results["tasks"].values():
        if r.get("scoring") == "likelihood":
            for metric in ("acc", "acc_norm"):
                lo, hi = r[f"{metric}_ci95"]
                rows.append(
                    (
                        r["task"],
                        metric,
                        f"{100 * r[metric]:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                        str(r["total"]),
                        f"{r['seconds']:.1f}",
                    )
                )
        elif "accuracy" in r:
            rows.append((r["task"], "accuracy", f"{100 * r['accuracy']:.2f}%", str(r["total"]), f"{r['seconds']:.1f}"))
        else:
            rows.append(
                (r["task"], "perplexity", f"{r['perplexity']:.3f}", str(r["windows"] or "all"), f"{r['seconds']:.1f}")
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def evaluate(
    model: str,
    config: Optional[EvalConfig] = None,
    adapter: Optional[str] = None,
    ir: Optional[str] = None,
    output: Optional[Union[str, os.PathLike]] = None,
    trust_remote_code: bool = False,
) -> EvalReport:
    """Score ``model`` (+ ``adapter``) or its exported ``ir`` on each of ``config.tasks``.

    Returns ``{"model", "adapter", "limit", "tasks": {name: result}}`` and, with ``output``, writes it with every
    sample. A bare task name reads its LLM-Adapters test file, ``TASK=FILE`` another file scored the same way;
    ``limit`` keeps the first N samples (N perplexity windows for ``wikitext2``). The torch model runs on
    ``device``; an IR always runs on the CPU it was built for, in ``precision`` (None = the one stored in the IR),
    through ``runtime``: ``infer`` (optimum-intel) or ``genai`` (OpenVINO GenAI; ``adapter`` is then applied at
    run time on the base IR). ``scoring`` is ``generate`` (LLM-Adapters: generate, extract the answer) or
    ``likelihood`` (multiple-choice tasks, as lm-evaluation-harness scores them; :mod:`shears_nncf.likelihood`).
    """
    cfg = config or EvalConfig()
    likelihood = cfg.scoring == "likelihood"
    genai = ir is not None and cfg.runtime == "genai"
    limit, batch_size, max_new_tokens, precision = cfg.limit, cfg.batch_size, cfg.max_new_tokens, cfg.precision
    torch_device = resolve_device(cfg.device)
    tasks = cfg.tasks
    specs = parse_eval_tasks(tasks)
    records = {s.task.name: load_test_records(s.path, limit) for s in specs if isinstance(s, TaskSpec)}
    if output is not None:
        check_output_file(output, "--output")
    if ir is not None and any(isinstance(s, str) for s in specs):
        raise ShearsError("wikitext2 perplexity is measured on the torch model only; drop --ir or the wikitext2 task")

    if ir is None and cfg.runtime == "genai":
        raise ShearsError("--runtime genai runs an OpenVINO IR; pass --ir")
    if likelihood:
        if genai:
            raise ShearsError(
                "OpenVINO GenAI returns no logits to score choices with; use --runtime infer with --scoring likelihood"
            )
        for spec in specs:  # every record parsed now: a task or file it cannot score fails before the model loads
            if isinstance(spec, str):
                raise ShearsError("wikitext2 is a perplexity; drop it from --tasks with --scoring likelihood")
            [parse_question(spec.task, r) for r in records[spec.task.name]]
    if ir is not None and adapter is not None and not genai:
        logger.warning(
            "--adapter %s is ignored: the IR %s carries the adapter it was exported with (run-time adapters "
            "need --runtime genai)",
            adapter,
            ir,
        )
    ran_precision = None
    if genai:
        net, tokenizer, ran_precision = _load_genai(ir, model, adapter, trust_remote_code, precision)
    elif ir is not None:
        net, tokenizer, ran_precision = _load_ir(ir, model, trust_remote_code, precision)
    else:
        net, tokenizer = _load(model, adapter, trust_remote_code, torch_device, precision)
        ran_precision = _TORCH_PRECISION.get(str(next(net.parameters()).dtype), str(next(net.parameters()).dtype))
    results: EvalReport = {
        "model": str(model),
        "adapter": str(adapter) if adapter else None,
        "ir": str(ir) if ir else None,
        "limit": limit,
        "runtime": cfg.runtime if ir is not None else "torch",
        "device": "cpu (OpenVINO)" if ir is not None else str(torch_device),
        "inference_precision": ran_precision,
        "tasks": {},
    }
    samples: dict = {}
    for spec in specs:
        if isinstance(spec, str):
            results["tasks"][spec] = _wikitext2(net, tokenizer, limit)
            continue
        task = spec.task
        if likelihood:
            loglik = ir_loglik_fn(net.request, tokenizer) if ir is not None else torch_loglik_fn(net, tokenizer)
            res = score_likelihood(task, records[task.name], loglik)
            logger.info(
                "%s: acc %.4f, acc_norm %.4f (n=%d) in %.1f s", task.name, res.acc, res.acc_norm, res.total, res.seconds
            )
        else:
            new_tokens = max_new_tokens or task.max_new_tokens
            generate = (
                _genai_generate_fn(net, tokenizer, new_tokens)
                if genai
                else make_generate_fn(net, tokenizer, new_tokens)
            )
            res = score_task(task, records[task.name], generate, batch_size)
            logger.info(
                "%s: accuracy %.4f (%d/%d) in %.1f s", task.name, res.accuracy, res.correct, res.total, res.seconds
            )
        results["tasks"][task.name] = {**res.to_dict(), "file": str(spec.path), "test_set": spec.is_test}
        samples[task.name] = res.samples
    if output is not None:  # with every response, prediction and label, as LLM-Adapters keeps them
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{output}.tmp")
        write_json(tmp, {**results, "samples": samples})
        os.replace(tmp, output)
    return results
