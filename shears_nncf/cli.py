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

from .config import BenchConfig, EvalConfig, ExportConfig, NLSConfig, PruningConfig, SearchConfig, TrainingConfig
from .errors import ShearsError
from .options import add_options, overrides

logger = logging.getLogger("shears_nncf")


def _quiet_nncf(args) -> None:
    """NNCF logs one INFO line per MatMul it leaves unquantized (123 in the demo); its chatter only with -v.

    Called by the commands that quantize, which import NNCF anyway (its logger resets its level on import).
    """
    from nncf.common.logging.logger import set_log_level

    set_log_level(logging.DEBUG if args.verbose else logging.WARNING)


def _config(path: Optional[str]):
    from .config import ShearsConfig
    from .config_file import load_config

    return load_config(path) if path else ShearsConfig()


def _with(section, args, cls, names=None):
    """``section`` with the options given on the command line."""
    from .config_file import with_overrides

    return with_overrides(section, **overrides(args, cls, names))


def _stage_parser(
    sub,
    name: str,
    help: str,
    func: Callable,
    model: str,
    output: str,
    adapter: Optional[str] = None,
    config: Optional[str] = None,
    config_required: bool = False,
    options: tuple = (),
) -> argparse.ArgumentParser:
    """A stage's sub-command: the arguments every stage shares (--model, [--adapter], --output, [--config],
    --trust-remote-code), then the options of each ``(config class, field names)`` in ``options``."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--model", required=True, help=model)
    if adapter:
        p.add_argument("--adapter", required=True, help=adapter)
    p.add_argument("--output", required=True, help=output)
    if config:
        p.add_argument("--config", required=config_required, help=config)
    for cls, names in options:
        add_options(p, cls, names)
    _trust_remote_code(p)
    p.set_defaults(func=func)
    return p


def _trust_remote_code(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder to run its own code")


PRUNE_OPTIONS = [
    "sparsity_level",
    "pattern",
    "method",
    "sparsity_profile",
    "owl_threshold",
    "owl_lambda",
    "calibration",
    "nsamples",
    "seqlen",
    "seed",
    "batch_size",
    "use_variant",
    "device",
]
TRAIN_OPTIONS = [
    "data",
    "max_steps",
    "epochs",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "seed",
    "bf16",
    "group_by_length",
]
SEARCH_OPTIONS = [
    "strategy",
    "eval",
    "budget",
    "limit",
    "patience",
    "population",
    "neighbours",
    "batch_size",
    "device",
    "seed",
    "base_model_id",
]
NLS_OPTIONS = ["sparse_adapter", "base_model_id"]
EXPORT_OPTIONS = [
    "adapter_mode",
    "quantize",
    "calibration",
    "sparse_rate",
    "nsamples",
    "seqlen",
    "ignored_scopes",
    "merge",
    "inference_precision",
]
BENCH_OPTIONS = ["prompt_len", "new_tokens", "threads", "repeats", "precision", "runtime", "adapter"]
EVAL_OPTIONS = ["limit", "batch_size", "max_new_tokens", "device", "precision", "runtime", "scoring"]


# ------------------------------------------------------------------------------------------------ prune


def _add_prune(sub) -> None:
    _stage_parser(
        sub,
        "prune",
        "stage 1: Wanda / SparseGPT / magnitude sparsification of a Hugging Face causal LM",
        _cmd_prune,
        model="model folder, hub id, or built-in name (smollm2-135m)",
        output="folder for the sparse model (+ sparsity_report.json)",
        config="NNCF-style JSON config with a 'compression' section",
        options=[(PruningConfig, PRUNE_OPTIONS)],
    )


def _cmd_prune(args) -> int:
    cfg = _config(args.config)
    from .pruning import format_report, prune

    wanda = _with(cfg.compression or PruningConfig(), args, PruningConfig, PRUNE_OPTIONS)
    print(
        format_report(prune(args.model, args.output, wanda, trust_remote_code=args.trust_remote_code)),
        "->",
        args.output,
    )
    return 0


# ------------------------------------------------------------------------------------------------ train


def _add_train(sub) -> None:
    p = _stage_parser(
        sub,
        "train",
        "stage 2: train an elastic-rank LoRA super-adapter with NLS",
        _cmd_train,
        model="the (sparse) model folder from 'prune'",
        output="folder for the super-adapter and checkpoints",
        config="NNCF-style JSON config with a bootstrapNAS.training section",
        config_required=True,
        options=[(TrainingConfig, TRAIN_OPTIONS), (NLSConfig, NLS_OPTIONS)],
    )
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")


def _cmd_train(args) -> int:
    cfg = _config(args.config)
    if cfg.nls is None:
        raise ShearsError(
            f"config {args.config} has no bootstrapNAS.training section; add one with an elasticity search space"
        )
    training = _with(cfg.training, args, TrainingConfig, TRAIN_OPTIONS)
    nls = _with(cfg.nls, args, NLSConfig, NLS_OPTIONS)
    from .training import format_report, train  # transformers is imported only once the config is known to be valid

    report = train(args.model, args.output, nls, training, resume=args.resume, trust_remote_code=args.trust_remote_code)
    print(format_report(report), "->", args.output)
    return 0


# ----------------------------------------------------------------------------------------------- search


def _add_search(sub) -> None:
    _stage_parser(
        sub,
        "search",
        "stage 3: pick a sub-adapter and extract it as a stock PEFT adapter",
        _cmd_search,
        model="the sparse model folder",
        adapter="the super-adapter folder from 'train'",
        output="folder for the extracted sub-adapter and search_report.json",
        config="NNCF-style JSON config (bootstrapNAS.search section)",
        options=[(SearchConfig, SEARCH_OPTIONS)],
    )


def _cmd_search(args) -> int:
    from .selection import format_report, search

    cfg = _config(args.config)
    scfg = _with(cfg.search, args, SearchConfig, SEARCH_OPTIONS)
    report = search(args.model, args.adapter, args.output, scfg, trust_remote_code=args.trust_remote_code)
    print(f"{format_report(report)}\n{'output':<12} {args.output}")
    return 0


# ----------------------------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    p = _stage_parser(
        sub,
        "export",
        "stage 4: OpenVINO IR with unmerged adapters, quantized for sparse CPU kernels",
        _cmd_export,
        model="the sparse model folder",
        output="folder for the OpenVINO IR",
        config="NNCF-style JSON config (export section)",
        options=[(ExportConfig, EXPORT_OPTIONS)],
    )
    p.add_argument(
        "--adapter",
        action="append",
        help="a PEFT adapter folder (e.g. the sub-adapter from 'search'); "
        "repeat it with --adapter-mode runtime to export several sub-adapters for one base IR",
    )


def _cmd_export(args) -> int:
    from .exporting import export, format_report

    cfg = _config(args.config)
    _quiet_nncf(args)
    ecfg = _with(cfg.export, args, ExportConfig, EXPORT_OPTIONS)
    report = export(
        args.model, args.output, adapter=args.adapter, config=ecfg, trust_remote_code=args.trust_remote_code
    )
    print(format_report(report, args.output))
    return 0


# ------------------------------------------------------------------------------------------------ merge


def _add_merge(sub) -> None:
    _stage_parser(
        sub,
        "merge",
        "merge a sparsity-masked adapter into the sparse model: one plain sparse model folder",
        _cmd_merge,
        model="the sparse model folder",
        adapter="a sub-adapter trained with --sparse-adapter",
        output="folder for the merged model",
    )


def _cmd_merge(args) -> int:
    from .merging import merge

    report = merge(args.model, args.adapter, args.output, trust_remote_code=args.trust_remote_code)
    print(f"merged {report['merged_layers']} layers, {report['zeros_kept']} zeros kept -> {args.output}")
    return 0


# ------------------------------------------------------------------------------------------------ bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="CPU inference benchmark of an OpenVINO IR, with the kernel each layer ran")
    p.add_argument("ir", help="OpenVINO IR folder from 'export'")
    p.add_argument("--baseline", help="a second IR folder to compare against")
    add_options(p, BenchConfig, BENCH_OPTIONS)
    p.add_argument("--json", help="where to save the results (default: IR/bench_report.json)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    from .benchmarking import bench, format_report

    bcfg = _with(BenchConfig(), args, BenchConfig, BENCH_OPTIONS)
    print(format_report(bench(args.ir, baseline=args.baseline, config=bcfg, output_json=args.json)))
    return 0


# --------------------------------------------------------------------------------------------- generate


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="text generation on OpenVINO GenAI: the IR, with run-time sub-adapters switched per call"
    )
    p.add_argument(
        "ir", help="OpenVINO IR folder from 'export' (with --adapter-mode runtime: the base IR + its adapters)"
    )
    p.add_argument("--prompt", action="append", help="the prompt (repeat for several); without it, read one from stdin")
    p.add_argument(
        "--adapter",
        action="append",
        help="a run-time adapter: a name exported with the IR, a GenAI .safetensors "
        "or a PEFT folder; 'none' = the base model; repeat to generate with each, on one pipeline",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt in the tokenizer's chat template (off by "
        "default: the adapters are trained on plain prompts; GenAI's own default is on)",
    )
    p.add_argument("--no-stream", action="store_true", help="print each answer whole instead of as it is generated")
    add_options(p, BenchConfig, ["threads", "precision"])
    p.set_defaults(func=_cmd_generate)


def _stdin_text() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShearsError(
            f"standard input is not UTF-8 text (byte {e.start} cannot be decoded); "
            "write the prompt as UTF-8 or pass --prompt"
        ) from None


def _cmd_generate(args) -> int:
    from .genai import generate

    prompts = args.prompt or [_stdin_text()]
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
        print(
            f"[{r['adapter'] or 'base'}: TTFT {r['ttft_ms']:.1f} ms, TPOT {r['tpot_ms']:.1f} ms]",
            file=sys.stderr,
            flush=True,
        )

    generate(
        args.ir,
        prompts,
        adapters,
        args.max_new_tokens,
        args.chat,
        args.precision,
        args.threads,
        on_start=start,
        streamer=None if args.no_stream else stream,
        on_end=end,
    )
    return 0


# ------------------------------------------------------------------------------------------------- eval


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="accuracy on LLM-Adapters tasks / wikitext-2 perplexity, torch model or IR")
    p.add_argument("--model", required=True, help="model folder (torch) ")
    p.add_argument("--adapter", help="PEFT adapter folder to apply")
    p.add_argument("--ir", help="evaluate this OpenVINO IR folder instead of the torch model")
    add_options(p, EvalConfig, ["tasks"])
    p.add_argument("--output", help="JSON file for the results")
    add_options(p, EvalConfig, EVAL_OPTIONS)
    _trust_remote_code(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from .evaluation import evaluate, format_report

    config = EvalConfig(**overrides(args, EvalConfig, ["tasks", *EVAL_OPTIONS]))
    results = evaluate(
        args.model,
        config,
        adapter=args.adapter,
        ir=args.ir,
        output=args.output,
        trust_remote_code=args.trust_remote_code,
    )
    print(format_report(results))
    return 0


# -------------------------------------------------------------------------------------------------- run


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="the whole pipeline from one config: prune -> train -> search -> export -> bench -> eval"
    )
    p.add_argument("--config", help="NNCF-style JSON config (default: the built-in SmolLM2 demo)")
    p.add_argument("--output", help="folder for every stage's output (default: the config's 'output' or ./shears_run)")
    p.add_argument("--from", dest="from_stage", help="first stage to run")
    p.add_argument("--to", dest="to_stage", help="last stage to run")
    p.add_argument(
        "--model", help="the model to start from (the config's 'model'; the Shears release configs name none)"
    )
    add_options(p, TrainingConfig, RUN_TRAIN_OPTIONS)
    _trust_remote_code(p)
    p.set_defaults(func=_cmd_run)


#: the training settings a release config (configs/original) leaves to the command line
RUN_TRAIN_OPTIONS = ["data", "max_steps"]


def _cmd_run(args) -> int:
    import dataclasses

    from .pipeline import DEMO_CONFIG, render_markdown, run

    cfg = _config(args.config or DEMO_CONFIG)
    cfg = dataclasses.replace(
        cfg, model=args.model or cfg.model, training=_with(cfg.training, args, TrainingConfig, RUN_TRAIN_OPTIONS)
    )
    _quiet_nncf(args)
    report = run(
        cfg,
        output=args.output,
        from_stage=args.from_stage,
        to_stage=args.to_stage,
        trust_remote_code=args.trust_remote_code,
    )
    print(render_markdown(report))
    return 0


# ------------------------------------------------------------------------------------------------- main

THIRD_PARTY_LOGGERS = (
    "nncf",
    "transformers",
    "optimum",
    "datasets",
    "accelerate",
    "peft",
    "openvino",
    "openvino_tokenizers",
    "urllib3",
    "filelock",
)

_COMMANDS: list[Callable] = [
    _add_prune,
    _add_train,
    _add_search,
    _add_export,
    _add_merge,
    _add_bench,
    _add_generate,
    _add_eval,
    _add_run,
]


class OneLineParser(argparse.ArgumentParser):
    """argparse's refusals as every other refusal: one line naming the problem and where to look, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="shears-nncf", description="Shears: Wanda sparsity + elastic LoRA (NLS) + OpenVINO export"
    )
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
    for name in THIRD_PARTY_LOGGERS:  # their INFO lines are for their developers; -v shows them
        logging.getLogger(name).setLevel(level if args.verbose else max(level, logging.WARNING))
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
