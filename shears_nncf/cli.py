"""``shears-nncf`` command line: one sub-command per pipeline stage, plus ``run`` for all of them.

User mistakes surface as :class:`ShearsError` and are printed as one line with exit code 2; stage modules
are imported lazily so ``--help`` and config errors answer at once.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional

from .errors import ShearsError

logger = logging.getLogger("shears_nncf")


def _quiet_nncf(args) -> None:
    """NNCF logs one INFO line per MatMul it leaves unquantized (123 in the demo); its chatter only with -v.

    Called by the commands that quantize, which import NNCF anyway (its logger resets its level on import).
    """
    from nncf.common.logging.logger import set_log_level

    set_log_level(logging.DEBUG if args.verbose else logging.WARNING)


def _config(path: Optional[str]):
    from .config import ShearsConfig, load_config

    return load_config(path) if path else ShearsConfig()


# ------------------------------------------------------------------------------------------------ prune


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="stage 1: Wanda / magnitude sparsification of a Hugging Face causal LM")
    p.add_argument("--model", required=True, help="model folder, hub id, or built-in name (smollm2-135m)")
    p.add_argument("--output", required=True, help="folder for the sparse model (+ sparsity_report.json)")
    p.add_argument("--config", help="NNCF-style JSON config with a 'compression' section")
    p.add_argument("--sparsity", type=float, help="fraction of zeros per pruned projection, in [0, 1)")
    p.add_argument("--pattern", help="unstructured | 2:4 | 4:8")
    p.add_argument("--method", help="wanda | sparsegpt | magnitude")
    p.add_argument("--sparsity-profile", help="uniform | owl (per-block ratios from outlier statistics, around --sparsity)")
    p.add_argument("--owl-threshold", type=float, help="OWL: a score is an outlier above this many times its block's mean (5)")
    p.add_argument("--owl-lambda", type=float, help="OWL: block ratios spread over sparsity +- this (0.08)")
    p.add_argument("--calibration", help="text / JSON-lines file or Hugging Face dataset name")
    p.add_argument("--nsamples", type=int, help="number of calibration windows")
    p.add_argument("--seqlen", type=int, help="tokens per calibration window")
    p.add_argument("--seed", type=int, help="seed of the random calibration windows")
    p.add_argument("--batch-size", type=int, help="calibration windows per block forward (memory vs speed)")
    p.add_argument("--use-variant", action="store_true", default=None, help="Wanda's adaptive per-row sparsity")
    p.add_argument("--device", help="auto (GPU if any, the default), cpu, cuda, cuda:1 ...")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder to run its own code")
    p.set_defaults(func=_cmd_prune)


def _cmd_prune(args) -> int:
    from .config import WandaConfig, replace

    cfg = _config(args.config)
    from .prune import prune

    wanda = replace(
        cfg.compression or WandaConfig(),
        sparsity_level=args.sparsity, pattern=args.pattern, method=args.method, calibration=args.calibration,
        nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, device=args.device,
        batch_size=args.batch_size, use_variant=args.use_variant, sparsity_profile=args.sparsity_profile,
        owl_threshold=args.owl_threshold, owl_lambda=args.owl_lambda,
    )
    report = prune(args.model, args.output, wanda, trust_remote_code=args.trust_remote_code)
    print(f"{report.method} {report.pattern}: {100 * report.sparsity:.2f}% zeros in {len(report.modules)} projections, "
          f"{report.seconds:.1f} s -> {args.output}")
    return 0


# ------------------------------------------------------------------------------------------------ train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="stage 2: train an elastic-rank LoRA super-adapter with NLS")
    p.add_argument("--model", required=True, help="the (sparse) model folder from 'prune'")
    p.add_argument("--config", required=True, help="NNCF-style JSON config with a bootstrapNAS.training section")
    p.add_argument("--data", help="comma-separated data files (LLM-Adapters JSON, GSM8K JSON lines) or HF dataset names")
    p.add_argument("--output", required=True, help="folder for the super-adapter and checkpoints")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--sparse-adapter", action="store_true", default=None,
                   help="mask the adapter update by the sparsity pattern (SQFT) so that it merges without filling zeros")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .config import replace

    cfg = _config(args.config)
    if cfg.nls is None:
        raise ShearsError(f"config {args.config} has no bootstrapNAS.training section; add one with an elasticity search space")
    training = replace(
        cfg.training,
        data=args.data.split(",") if args.data else None, max_steps=args.max_steps, epochs=args.epochs,
        learning_rate=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, seed=args.seed,
    )
    from .train import train  # transformers is imported only once the config is known to be valid

    nls = replace(cfg.nls, sparse_adapter=args.sparse_adapter)
    train(args.model, args.output, nls, training, resume=args.resume,
          trust_remote_code=args.trust_remote_code)
    return 0


# ----------------------------------------------------------------------------------------------- search


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="stage 3: pick a sub-adapter and extract it as a stock PEFT adapter")
    p.add_argument("--model", required=True, help="the sparse model folder")
    p.add_argument("--adapter", required=True, help="the super-adapter folder from 'train'")
    p.add_argument("--output", required=True, help="folder for the extracted sub-adapter and search_report.json")
    p.add_argument("--config", help="NNCF-style JSON config (bootstrapNAS.search section)")
    p.add_argument("--strategy", help="heuristic | hill-climbing | nsga2 | maximal | minimal | CONFIG.json")
    p.add_argument("--eval", help="'loss' (the super-adapter's validation split) or comma-separated TASK (its test set: "
                                  "flagged in the report) or TASK=FILE")
    p.add_argument("--budget", type=int, help="maximum number of configurations hill-climbing / nsga2 may score")
    p.add_argument("--limit", type=int, help="first N validation records or task samples")
    p.add_argument("--patience", type=int, help="turns / generations without improvement before stopping")
    p.add_argument("--population", type=int, help="NSGA-II population size")
    p.add_argument("--neighbours", type=int, help="neighbours scored per hill-climbing turn")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto (GPU if any, the default), cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int)
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args) -> int:
    from .config import replace
    from .search import search

    cfg = _config(args.config)
    scfg = replace(cfg.search, strategy=args.strategy, eval=args.eval, budget=args.budget, limit=args.limit, seed=args.seed,
                   patience=args.patience, population=args.population, neighbours=args.neighbours, batch_size=args.batch_size,
                   device=args.device)
    report = search(args.model, args.adapter, args.output, scfg,
                    trust_remote_code=args.trust_remote_code)
    chosen = report["chosen"]
    print(f"{'strategy':<12} {report['strategy']}\n{'evaluated':<12} {report['num_evaluations']}\n"
          f"{'score':<12} {chosen['score']:.6g} ({report['evaluator']['score']})\n"
          f"{'adapter':<12} {chosen['adapter_params']} parameters\n{'output':<12} {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="stage 4: OpenVINO IR with unmerged adapters, quantized for sparse CPU kernels")
    p.add_argument("--model", required=True, help="the sparse model folder")
    p.add_argument("--adapter", action="append", help="a PEFT adapter folder (e.g. the sub-adapter from 'search'); "
                   "repeat it with --adapter-mode runtime to export several sub-adapters for one base IR")
    p.add_argument("--adapter-mode", help="in-ir (default): the adapter as MatMuls inside the IR; runtime: the base IR once "
                   "+ genai_adapters/NAME.safetensors that OpenVINO GenAI applies at run time")
    p.add_argument("--output", required=True, help="folder for the OpenVINO IR")
    p.add_argument("--config", help="NNCF-style JSON config (export section)")
    p.add_argument("--quantize", help="w8a8 | int8-weights | int4-weights | none")
    p.add_argument("--calibration", help="text / JSON-lines file or HF dataset name for W8A8 calibration")
    p.add_argument("--sparse-rate", help="'auto' (from measured sparsity) or a number in [0, 1]")
    p.add_argument("--nsamples", type=int, help="number of W8A8 calibration windows")
    p.add_argument("--seqlen", type=int, help="tokens per W8A8 calibration window")
    p.add_argument("--ignored-scopes", help="W8A8: comma-separated Linear names / regexes kept with float inputs "
                   "(int8 weight-only); default: the MLP output projections and lm_head; '' = none")
    p.add_argument("--overflow-fix", help="NNCF overflow fix, 7-bit weights against int8 saturation on CPUs without "
                   "VNNI/AMX: enable | first_layer_only (default) | disable")
    p.add_argument("--merge", action="store_true", default=None,
                   help="merge a sparsity-masked adapter (train --sparse-adapter) into the sparse weights: no adapter MatMuls")
    p.add_argument("--inference-precision", help="precision OpenVINO runs the IR's float ops in, stored in the IR: "
                   "f32 (default) | bf16 | default (OpenVINO's choice: bf16 on AMX CPUs)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from .config import replace
    from .export import export

    cfg = _config(args.config)
    _quiet_nncf(args)
    ecfg = replace(cfg.export, quantize=args.quantize, calibration=args.calibration, sparse_rate=args.sparse_rate,
                   nsamples=args.nsamples, seqlen=args.seqlen, ignored_scopes=args.ignored_scopes,
                   overflow_fix=args.overflow_fix, inference_precision=args.inference_precision,
                   merge=args.merge, adapter_mode=args.adapter_mode)
    report = export(args.model, args.output, adapter=args.adapter, config=ecfg,
                    trust_remote_code=args.trust_remote_code)
    print(f"{report['precision']}, sparse rate {report['sparse_rate']}, {report['pruned_layers']} pruned layers "
          f"(min sparsity {report['min_pruned_sparsity']}, {report['sparse_kernel_layers']} of them W8A8), "
          f"{report['lora_matmuls']} unmerged LoRA MatMuls, {len(report['sparse_kernel_guarded_layers'])} layers kept off "
          f"the sparse kernel, inference precision {report['inference_precision']}, "
          f"{report['timing_s']['total']:.1f} s -> {args.output}")
    for name, info in report["genai_adapters"].items():
        print(f"run-time adapter {name}: {args.output}/genai_adapters/{info['file']} ({info['layers']} layers; "
              f"shears-nncf generate {args.output} --adapter {name})")
    return 0


# ------------------------------------------------------------------------------------------------ merge


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge a sparsity-masked adapter into the sparse model: one plain sparse model folder")
    p.add_argument("--model", required=True, help="the sparse model folder")
    p.add_argument("--adapter", required=True, help="a sub-adapter trained with --sparse-adapter")
    p.add_argument("--output", required=True, help="folder for the merged model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from .adapters import merge

    report = merge(args.model, args.adapter, args.output, trust_remote_code=args.trust_remote_code)
    print(f"merged {report['merged_layers']} layers, {report['zeros_kept']} zeros kept -> {args.output}")
    return 0


# ------------------------------------------------------------------------------------------------ bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="CPU inference benchmark of an OpenVINO IR, with the kernel each layer ran")
    p.add_argument("ir", help="OpenVINO IR folder from 'export'")
    p.add_argument("--baseline", help="a second IR folder to compare against")
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--precision", help="inference precision: f32 | bf16 | default (OpenVINO's); default: the IR's stored one")
    p.add_argument("--runtime", help="genai (default): OpenVINO GenAI's LLMPipeline, the path users deploy; "
                   "infer: the IR's own infer request, token by token")
    p.add_argument("--adapter", help="genai: a run-time adapter (a name exported with the IR, a GenAI .safetensors, or a PEFT folder)")
    p.add_argument("--json", help="where to save the results (default: IR/bench_report.json)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from .bench import bench, format_report
    from .config import BenchConfig, replace

    bcfg = replace(BenchConfig(), prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads, repeats=args.repeats,
                   precision=args.precision, runtime=args.runtime, adapter=args.adapter)
    print(format_report(bench(args.ir, baseline=args.baseline, config=bcfg, output_json=args.json)))
    return 0


# --------------------------------------------------------------------------------------------- generate


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text generation on OpenVINO GenAI: the IR, with run-time sub-adapters switched per call")
    p.add_argument("ir", help="OpenVINO IR folder from 'export' (with --adapter-mode runtime: the base IR + its adapters)")
    p.add_argument("--prompt", action="append", help="the prompt (repeat for several); without it, read one from stdin")
    p.add_argument("--adapter", action="append", help="a run-time adapter: a name exported with the IR, a GenAI .safetensors "
                   "or a PEFT folder; 'none' = the base model; repeat to generate with each, on one pipeline")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--no-stream", action="store_true", help="print each answer whole instead of as it is generated")
    p.add_argument("--threads", type=int)
    p.add_argument("--precision", help="f32 | bf16 | default (OpenVINO's); default: the IR's stored one")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from .genai import generate

    prompts = args.prompt or [sys.stdin.read()]
    if not any(p.strip() for p in prompts):
        raise ShearsError("empty prompt; pass --prompt TEXT or write the prompt to standard input")
    adapters = [None if a.lower() == "none" else a for a in (args.adapter or ["none"])]
    several = len(prompts) * len(adapters) > 1

    def start(adapter, prompt):
        if several:
            print(f"\n== adapter: {adapter or 'none (base)'} | prompt: {prompt[:60]!r}", flush=True)

    def stream(piece):
        print(piece, end="", flush=True)

    def end(r):
        if args.no_stream:
            print(r["text"], end="")
        print(flush=True)
        print(f"[{r['adapter'] or 'base'}: TTFT {r['ttft_ms']:.1f} ms, TPOT {r['tpot_ms']:.1f} ms]", file=sys.stderr, flush=True)

    generate(args.ir, prompts, adapters, args.max_new_tokens, args.chat, args.precision, args.threads,
             on_start=start, streamer=None if args.no_stream else stream, on_end=end)
    return 0


# ------------------------------------------------------------------------------------------------- eval


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy on LLM-Adapters tasks / wikitext-2 perplexity, torch model or IR")
    p.add_argument("--model", required=True, help="model folder (torch) ")
    p.add_argument("--adapter", help="PEFT adapter folder to apply")
    p.add_argument("--ir", help="evaluate this OpenVINO IR folder instead of the torch model")
    p.add_argument("--tasks", required=True, help="comma-separated: gsm8k, AQuA, boolq, ..., wikitext2; TASK=FILE scores another file")
    p.add_argument("--limit", type=int, help="first N samples of each task")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int, help="override the task's generation length (math 256, commonsense 32)")
    p.add_argument("--output", help="JSON file for the results")
    p.add_argument("--device", help="torch model only: auto (GPU if any, the default), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", help="f32 | bf16 | default (OpenVINO's); default: the IR's stored one, f32 for a torch model")
    p.add_argument("--runtime", help="IR only: infer (optimum-intel, the default) | genai (OpenVINO GenAI's LLMPipeline; "
                   "--adapter then names a run-time adapter)")
    p.add_argument("--scoring", help="generate (default: LLM-Adapters' generation + answer extraction) | likelihood "
                   "(multiple-choice tasks: each choice's log-likelihood, acc / acc_norm with 95%% intervals, as lm-eval)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from .evaluate import evaluate, format_table

    results = evaluate(args.model, args.tasks.split(","), adapter=args.adapter, ir=args.ir, limit=args.limit,
                       batch_size=args.batch_size, output=args.output, trust_remote_code=args.trust_remote_code,
                       max_new_tokens=args.max_new_tokens, device=args.device, precision=args.precision,
                       runtime=args.runtime, scoring=args.scoring)
    print(format_table(results))
    return 0


# -------------------------------------------------------------------------------------------------- run


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline from one config: prune -> train -> search -> export -> bench -> eval")
    p.add_argument("--config", help="NNCF-style JSON config (default: the built-in SmolLM2 demo)")
    p.add_argument("--output", help="folder for every stage's output (default: the config's 'output' or ./shears_run)")
    p.add_argument("--from", dest="from_stage", help="first stage to run")
    p.add_argument("--to", dest="to_stage", help="last stage to run")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder to run its own code")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from .pipeline import run

    _quiet_nncf(args)
    run(args.config, output=args.output, from_stage=args.from_stage, to_stage=args.to_stage,
        trust_remote_code=args.trust_remote_code)
    return 0


# ------------------------------------------------------------------------------------------------- main

_COMMANDS: list[Callable] = [_add_prune, _add_train, _add_search, _add_export, _add_merge, _add_bench, _add_generate, _add_eval, _add_run]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shears-nncf", description="Shears: Wanda sparsity + elastic LoRA (NLS) + OpenVINO export")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except ShearsError as e:
        print(f"shears-nncf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shears-nncf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
