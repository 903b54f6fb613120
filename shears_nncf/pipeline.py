"""``shears-nncf run``: every stage from one config, each into its own folder, resumable.

A stage whose output folder is complete is skipped on re-run (stage outputs are written atomically, and
training resumes from its last checkpoint), so an interrupted run continues where it stopped. The configuration
the run used, every default written out, is saved as ``shears_config.json`` in the output folder: ``run --config
OUT/shears_config.json`` runs the same pipeline again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from .config import STAGES, EvalConfig, ShearsConfig
from .config_file import load_config, save_config
from .errors import ShearsError
from .io import read_json, write_json
from .reports import REPORT_FILES, RunReport

logger = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).parent / "configs" / "smollm2_demo.json"

#: Folder (or file) of each stage under the run's output folder.
LAYOUT = {
    "prune": "sparse_model",
    "train": "super_adapter",
    "search": "sub_adapter",
    "export": "openvino_ir",
    "bench": REPORT_FILES["bench"],
    "eval": REPORT_FILES["eval"],
}
#: the effective configuration of the run, beside its outputs
CONFIG_NAME = "shears_config.json"


def _stage_range(from_stage: Optional[str], to_stage: Optional[str]) -> list[str]:
    for s in (from_stage, to_stage):
        if s is not None and s not in STAGES:
            raise ShearsError(f"unknown stage {s!r}; stages are {', '.join(STAGES)}")
    lo = STAGES.index(from_stage) if from_stage else 0
    hi = STAGES.index(to_stage) if to_stage else len(STAGES) - 1
    if lo > hi:
        raise ShearsError(
            f"--from {from_stage} comes after --to {to_stage}; stages run in the order {' -> '.join(STAGES)}"
        )
    return list(STAGES[lo : hi + 1])


def _check_inputs(cfg: ShearsConfig, stages: list[str], trust_remote_code: bool = False) -> None:
    """Fail before any work when a stage that will run lacks what it needs (not after the stages before it)."""
    if cfg.model is None:
        raise ShearsError(
            'the config names no \'model\'; pass --model PATH_OR_NAME or add "model": "PATH_OR_NAME" '
            "(e.g. smollm2-135m)"
        )
    if "eval" in stages and cfg.eval.tasks:
        from .evaluation import parse_eval_tasks

        parse_eval_tasks(cfg.eval.tasks)  # unknown task names and missing task files
    # module patterns of every stage, on the weightless module tree of the (dense) model: pruning keeps the layout
    from .models import model_skeleton, prunable_linears

    skeleton = model_skeleton(cfg.model, trust_remote_code)
    if "prune" in stages and cfg.compression is not None:
        prunable_linears(skeleton, cfg.compression.target_modules, cfg.compression.ignored_scopes)
    if "train" in stages and cfg.nls is not None:
        from .elastic import build_search_space

        build_search_space(skeleton, cfg.nls)
    if "export" in stages and cfg.export.quantize == "w8a8":
        from .quantization import float_input_modules

        float_input_modules(skeleton, cfg.export.ignored_scopes)
    if "train" in stages:
        if cfg.nls is None:
            raise ShearsError(
                "the config has no bootstrapNAS.training section; the train stage needs its elasticity search space"
            )
        if not cfg.training.data:
            raise ShearsError("the config has no training.data; name the instruction data files to train on")
        for d in cfg.training.data:
            if ("/" in d or d.endswith((".json", ".jsonl"))) and not Path(d).exists():
                raise ShearsError(
                    f"training data file {d} does not exist; fix training.data (a config's relative "
                    "paths are looked up in its own folder, then in the data folder $SHEARS_NNCF_DATA)"
                )


def _runtime_bench(cfg: ShearsConfig, adapter: Optional[str]):
    """The bench settings; with run-time adapters, timed through GenAI with the sub-adapter the export wrote."""
    if cfg.export.adapter_mode != "runtime" or adapter is None:
        return cfg.bench
    return dataclasses.replace(cfg.bench, runtime="genai", adapter=Path(adapter).name)


def run(
    config: str | os.PathLike | ShearsConfig | None = None,
    output: Optional[str | os.PathLike] = None,
    from_stage: Optional[str] = None,
    to_stage: Optional[str] = None,
    trust_remote_code: bool = False,
) -> RunReport:
    """Run prune -> train -> search -> export -> bench -> eval; return the final report.

    ``trust_remote_code`` lets the model folder run its own code; a config file cannot switch it on.
    """
    cfg = config if isinstance(config, ShearsConfig) else load_config(config or DEMO_CONFIG)
    out = Path(output or cfg.output or "shears_run")
    stages = _stage_range(from_stage, to_stage)
    _check_inputs(cfg, stages, trust_remote_code)
    if out.exists() and not out.is_dir():
        raise ShearsError(f"--output {out} is an existing file; choose a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShearsError(f"cannot create the output folder {out} ({e.strerror}); choose a writable --output") from None
    try:
        report = _run_stages(cfg, out, stages, trust_remote_code)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        raise
    save_config(dataclasses.replace(cfg, output=str(out)), out / CONFIG_NAME)  # the config of a run that worked
    return report


def _run_stages(cfg: ShearsConfig, out: Path, stages: list[str], trust_remote_code: bool) -> dict:
    paths = {s: out / name for s, name in LAYOUT.items()}
    model_dir = str(paths["prune"]) if cfg.compression is not None else cfg.model
    adapter = str(paths["search"]) if cfg.nls is not None else None
    timings: dict[str, float] = {}
    trc = trust_remote_code

    for stage in stages:
        target = paths[stage]
        if stage == "train" and (target / REPORT_FILES["train"]).is_file() or stage != "train" and target.exists():
            logger.info("stage %s: %s exists, skipping", stage, target)
            continue
        logger.info("stage %s -> %s", stage, target)
        t0 = time.perf_counter()
        if stage == "prune":
            if cfg.compression is None:
                logger.info("stage prune: the config has no 'compression' section; using the dense model")
                continue
            from .pruning import prune

            prune(cfg.model, target, cfg.compression, trust_remote_code=trc)
        elif stage == "train":
            if cfg.nls is None:
                continue
            from .training import train

            train(model_dir, target, cfg.nls, cfg.training, resume=target.exists(), trust_remote_code=trc)
        elif stage == "search":
            if cfg.nls is None:
                continue
            from .selection import search

            search(model_dir, paths["train"], target, cfg.search, trust_remote_code=trc)
        elif stage == "export":
            from .exporting import export

            export(model_dir, target, adapter=adapter, config=cfg.export, trust_remote_code=trc)
        elif stage == "bench":
            from .benchmarking import bench

            bench(paths["export"], config=_runtime_bench(cfg, adapter), output_json=target)
        elif stage == "eval":
            if not cfg.eval.tasks:
                continue
            from .evaluation import evaluate

            # the torch model in f32 (as trained); eval.precision and eval.runtime are the IR's
            torch_cfg = dataclasses.replace(cfg.eval, precision=None, runtime=EvalConfig.runtime)
            results = {}
            if cfg.eval.baselines:  # what the tuned model is measured against, scored the same way
                results["dense"] = evaluate(cfg.model, torch_cfg, trust_remote_code=trc)
                if cfg.compression is not None and adapter is not None:
                    results["sparse"] = evaluate(model_dir, torch_cfg, trust_remote_code=trc)
            results["torch"] = evaluate(model_dir, torch_cfg, adapter=adapter, trust_remote_code=trc)
            if cfg.eval.ir and paths["export"].exists():
                runtime = cfg.export.adapter_mode == "runtime"  # the base IR: the sub-adapter is applied by GenAI
                ir_cfg = dataclasses.replace(cfg.eval, runtime="genai") if runtime else cfg.eval
                results["openvino"] = evaluate(
                    model_dir, ir_cfg, ir=paths["export"], adapter=Path(adapter).name if runtime and adapter else None
                )
            write_json(target, results)
        timings[stage] = round(time.perf_counter() - t0, 1)

    report = build_report(out, cfg, timings)
    write_json(out / REPORT_FILES["run"], report)
    (out / "report.md").write_text(render_markdown(report))
    return report


def _maybe(path: Path) -> Optional[dict]:
    return read_json(path) if path.is_file() else None


def _plot_loss_curve(train_report: dict, png: Path) -> Optional[str]:
    history = train_report.get("log_history") or train_report.get("loss_curve") or []
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(*zip(*points), marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (sampled sub-adapter)")
    ax.set_title("NLS super-adapter training")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png.name


def build_report(out: Path, cfg: ShearsConfig, timings: dict[str, float]) -> RunReport:
    """Collect every stage's own report into one summary."""
    sparsity, training, search, export = (
        _maybe(out / LAYOUT[s] / REPORT_FILES[s]) for s in ("prune", "train", "search", "export")
    )
    earlier = (_maybe(out / REPORT_FILES["run"]) or {}).get("stage_seconds") or {}
    report: RunReport = {
        "model": cfg.model,
        "stage_seconds_this_run": timings,
        # a resumed run keeps the times of the stages it skipped
        "stage_seconds": {s: (earlier | timings).get(s) for s in STAGES if s in timings or s in earlier},
        "sparsity": sparsity,
        "training": {k: v for k, v in (training or {}).items() if k != "log_history"} or None,
        "loss_curve_png": _plot_loss_curve(training, out / "loss_curve.png") if training else None,
        "search": {
            k: search.get(k) for k in ("strategy", "evaluator", "chosen", "references", "used_test_set") if k in search
        }
        if search
        else None,
        "export": export,
        "bench": _maybe(out / LAYOUT["bench"]),
        "eval": _maybe(out / LAYOUT["eval"]),
    }
    return report


def _fmt(x, nd=4) -> str:
    return f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _search_lines(se: dict) -> list[str]:
    """The chosen sub-adapter beside the reference ones; a config is summarised as how many groups take each rank."""
    ev = se.get("evaluator") or {}
    lines = [
        f"- strategy: {se.get('strategy')}, scored by {ev.get('score', ev.get('kind'))} "
        f"on {ev.get('records', ev.get('limit'))} records; selection used a test set: {se.get('used_test_set')}",
        "",
        "| sub-adapter | score | adapter params | groups per rank |",
        "| --- | --- | --- | --- |",
    ]
    rows = {"chosen": se.get("chosen") or {}, **(se.get("references") or {})}
    for name, ev_ in rows.items():
        if not ev_:
            continue
        counts = Counter((ev_.get("config") or {}).values())
        ranks = ", ".join(f"r{r}: {n}" for r, n in sorted(counts.items(), reverse=True))
        lines.append(f"| {name} | {_fmt(ev_.get('score'))} | {ev_.get('adapter_params')} | {ranks} |")
    return lines


#: the eval report's rows, as the run's summary names them
_EVAL_ROWS = {
    "dense": "dense model, untuned",
    "sparse": "sparse model, untuned",
    "torch": "sparse + sub-adapter (torch)",
    "openvino": "sparse + sub-adapter (OpenVINO IR)",
}


def render_markdown(report: RunReport) -> str:
    lines = [f"# Shears run: {report['model']}", ""]
    sp = report.get("sparsity")
    if sp:
        lines += [
            "## Sparsity",
            f"- method: {sp.get('method')}, pattern: {sp.get('pattern')}, "
            f"zero fraction of the pruned projections: {_fmt(sp.get('sparsity'))} "
            f"({sp.get('zeros')} of {sp.get('params')} weights)",
            "",
        ]
    tr = report.get("training")
    if tr:
        lines += ["## NLS training", *[f"- {k}: {_fmt(v)}" for k, v in tr.items() if not isinstance(v, (dict, list))]]
        if report.get("loss_curve_png"):
            lines.append(f"- loss curve: ![loss]({report['loss_curve_png']})")
        lines.append("")
    se = report.get("search")
    if se:
        lines += ["## Sub-adapter search", *_search_lines(se), ""]
    ex = report.get("export")
    if ex:
        lines += [
            "## OpenVINO export",
            *[f"- {k}: {_fmt(v)}" for k, v in ex.items() if not isinstance(v, (dict, list))],
        ]
        read = ex.get("weight_bytes_per_token") or {}
        lines += [
            "",
            "| weights read per decoded token | MB |",
            "| --- | --- |",
            *[
                f"| {k}{' (sparse kernel on AMX CPUs)' if k == 'this IR' else ' (dense)'} | {v / 1e6:.1f} |"
                for k, v in read.items()
            ],
            "",
        ]
    be = report.get("bench")
    if be:
        lines += [
            "## CPU benchmark",
            *[f"- {k}: {_fmt(v)}" for k, v in be.items() if not isinstance(v, (dict, list))],
            "",
        ]
    ev = report.get("eval")
    if ev:
        lines += [
            "## Accuracy",
            "| model | precision | task | metric | value | 95% interval | n |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for backend, res in ev.items():
            for task, r in (res.get("tasks", res) if isinstance(res, dict) else {}).items():
                if isinstance(r, dict):
                    metric = next((m for m in ("accuracy", "acc", "perplexity") if m in r), next(iter(r), ""))
                    ci = r.get(f"{metric}_ci95")
                    lines.append(
                        f"| {_EVAL_ROWS.get(backend, backend)} | {res.get('inference_precision')} | {task} | "
                        f"{metric} | {_fmt(r.get(metric))} | {f'{ci[0]:.3f}-{ci[1]:.3f}' if ci else ''} | "
                        f"{r.get('total', r.get('n', ''))} |"
                    )
        lines.append("")
    times = report.get("stage_seconds") or {}
    lines.append(
        f"Stage times (s): {', '.join(f'{k} {v}' for k, v in times.items()) or 'none'}"
        f" (this run: {', '.join(report.get('stage_seconds_this_run') or {}) or 'all stages skipped'})"
    )
    return "\n".join(lines) + "\n"
