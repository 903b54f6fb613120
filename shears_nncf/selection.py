"""Stage 3: find a good sub-adapter inside the NLS super-adapter and extract it as a stock PEFT adapter.

Strategies (:mod:`shears_nncf.strategies`): ``maximal`` / ``minimal`` / ``heuristic`` / a given
``CONFIG.json`` (one evaluation each), ``hill-climbing`` and ``nsga2``; the report and ``search.png`` are
made from the :class:`~shears_nncf.strategies.Scorer`'s history.

Evaluators: the validation loss of the super-adapter folder's ``validation.jsonl`` (a cheap proxy) or
task accuracy by greedy generation (:mod:`shears_nncf.tasks`).

Extraction slices ``A[:r]`` / ``B[:, :r]`` per module and writes ``rank_pattern`` plus
``alpha_pattern = alpha * r / max_rank``, so that PEFT's scaling ``alpha_pattern / r`` stays the
super-adapter's ``alpha / max_rank`` and the loaded model equals the super-adapter with that configuration.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from transformers import DataCollatorForSeq2Seq

from .adapters import check_adapter_matches, is_masked, mark_masked
from .cards import write_adapter_card
from .config import SEARCH_STRATEGIES, SearchConfig
from .datasets import IGNORE_INDEX, VALIDATION_FILE, load_validation, normalize_record, tokenize_record
from .elastic import ELASTIC_CONFIG_NAME, SearchSpace, SubnetConfig, load_elastic_lora
from .errors import ShearsError
from .io import atomic_output_dir, read_json, write_json
from .models import base_model_id, load_model, load_tokenizer, model_skeleton, resolve_device
from .perplexity import token_nll
from .reports import REPORT_FILES, SearchReport
from .strategies import Scorer, SearchResult, evaluate_one, hill_climb, nsga2, pareto_front
from .tasks import TaskSpec, load_test_records, make_generate_fn, parse_task_specs, score_task

logger = logging.getLogger(__name__)

SUBNET_CONFIG_NAME = "subnet_config.json"
REPORT_NAME = REPORT_FILES["search"]
PLOT_NAME = "search.png"


# ------------------------------------------------------------------------------------------- evaluators


class LossEvaluator:
    """Mean token cross-entropy of the responses in the validation split (lower is better)."""

    def __init__(self, model, controller, tokenizer, records: list[dict], batch_size: int = 8, cutoff_len: int = 256):
        self.model = model
        self.controller = controller
        examples = []
        for r in records:  # tokenized exactly as training did: prompt masked, EOS appended
            enc = tokenize_record(normalize_record(r, "validation record"), tokenizer, cutoff_len)
            if any(t != IGNORE_INDEX for t in enc["labels"]):
                examples.append((enc["input_ids"], enc["labels"]))
        if not examples:
            raise ShearsError(
                f"no validation record keeps response tokens within {cutoff_len} tokens; raise cutoff_len"
            )
        if len(examples) < len(records):
            logger.warning(
                "%d of %d validation records have no response token within cutoff_len=%d and are not scored",
                len(records) - len(examples),
                len(records),
                cutoff_len,
            )
        examples.sort(key=lambda e: len(e[0]))  # similar lengths together: less padding
        collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
        self.batches = [
            collate([{"input_ids": x, "labels": y} for x, y in examples[i : i + batch_size]])
            for i in range(0, len(examples), batch_size)
        ]
        self.n_records = len(examples)

    @torch.no_grad()
    def __call__(self, config: SubnetConfig) -> tuple[float, dict]:
        self.controller.activate(config)
        device = next(self.model.parameters()).device
        total, count = 0.0, 0
        for batch in self.batches:
            logits = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            nll, tokens = token_nll(logits, batch["labels"].to(device))
            total, count = total + nll, count + tokens
        loss = total / count
        return loss, {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


class AccuracyEvaluator:
    """Task accuracy by greedy generation; the score is the error rate ``1 - mean accuracy``."""

    def __init__(
        self, model, controller, tokenizer, specs: list[TaskSpec], limit: Optional[int] = None, batch_size: int = 8
    ):
        self.controller = controller
        self.specs = specs
        self.records = {s.task.name: load_test_records(s.path, limit) for s in specs}
        self.generate = {s.task.name: make_generate_fn(model, tokenizer, s.task.max_new_tokens) for s in specs}
        self.batch_size = batch_size

    def __call__(self, config: SubnetConfig) -> tuple[float, dict]:
        self.controller.activate(config)
        acc = {}
        for s in self.specs:
            name = s.task.name
            acc[name] = score_task(s.task, self.records[name], self.generate[name], self.batch_size).accuracy
        mean = sum(acc.values()) / len(acc)
        return 1.0 - mean, {"accuracy": mean, **{f"accuracy/{k}": v for k, v in acc.items()}}


# ------------------------------------------------------------------------------------------- extraction


def _split_lora_key(key: str) -> tuple[Optional[str], Optional[str]]:
    """``base_model.model.<module>.lora_A.weight`` -> (``<module>``, ``lora_A``); other keys -> (None, None)."""
    for kind in ("lora_A", "lora_B"):
        suffix = f".{kind}.weight"
        if key.endswith(suffix):
            return key[: -len(suffix)].removeprefix("base_model.model."), kind
    return None, None


def extract_subadapter(
    adapter_dir: Union[str, Path],
    config: Mapping[str, int],
    out_dir: Union[str, Path],
    base_model: Optional[str] = None,
) -> Path:
    """Write the sub-adapter ``config`` of a super-adapter folder as a plain PEFT LoRA folder.

    The result loads with ``PeftModel.from_pretrained(base, out_dir)`` and equals the super-adapter with
    ``config`` active. Also writes ``subnet_config.json``.
    """
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    space = SearchSpace.load(adapter_dir)
    config = space.validate(config)
    weights_path = adapter_dir / SAFETENSORS_WEIGHTS_NAME
    if not weights_path.is_file():
        raise ShearsError(
            f"{adapter_dir} has no {SAFETENSORS_WEIGHTS_NAME}; pass the super-adapter folder written "
            "by 'shears-nncf train'"
        )
    ranks = space.module_ranks(config)
    sliced = {}
    for key, tensor in load_file(str(weights_path)).items():
        module, kind = _split_lora_key(key)
        if module is None:
            sliced[key] = tensor
            continue
        if module not in ranks:
            raise ShearsError(
                f"the super-adapter has weights for {module}, which its {ELASTIC_CONFIG_NAME} does "
                "not list; re-create it"
            )
        r = ranks[module]
        sliced[key] = (tensor[:r] if kind == "lora_A" else tensor[:, :r]).contiguous()

    lora_config = LoraConfig.from_pretrained(str(adapter_dir))
    elastic = {m: r for g in space.groups for m in g.modules for r in [config[g.name]]}
    lora_config.r = space.max_rank
    lora_config.lora_alpha = space.lora_alpha
    lora_config.rank_pattern = dict(elastic)
    lora_config.alpha_pattern = {m: space.lora_alpha * r / space.max_rank for m, r in elastic.items()}
    lora_config.inference_mode = True
    if base_model is not None:  # what stock loaders read: a hub id or an absolute path
        lora_config.base_model_name_or_path = base_model

    out_dir.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(out_dir))
    save_file(sliced, str(out_dir / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
    write_json(out_dir / SUBNET_CONFIG_NAME, config)
    if is_masked(adapter_dir):
        mark_masked(out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------ report/plot


def format_report(report: SearchReport) -> str:
    """The chosen sub-adapter, for the command line."""
    chosen = report["chosen"]
    return (
        f"{'strategy':<12} {report['strategy']}\n{'evaluated':<12} {report['num_evaluations']}\n"
        f"{'score':<12} {chosen['score']:.6g} ({report['evaluator']['score']})\n"
        f"{'adapter':<12} {chosen['adapter_params']} parameters"
    )


def plot_search(report: dict, path: Union[str, Path]) -> None:
    """Score vs adapter parameters of every evaluation; the Pareto front, references and choice marked."""
    from matplotlib.figure import Figure

    evals = report["evaluations"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.scatter([e["adapter_params"] for e in evals], [e["score"] for e in evals], s=14, c="0.6", label="evaluated")
    front = report["pareto_front"]
    ax.plot(
        [e["adapter_params"] for e in front],
        [e["score"] for e in front],
        "o-",
        c="tab:blue",
        ms=5,
        label="Pareto front",
    )
    markers = {"maximal": ("^", "tab:green"), "heuristic": ("s", "tab:orange"), "minimal": ("v", "tab:purple")}
    for name, (marker, colour) in markers.items():
        ref = report["references"].get(name)
        if ref is not None:
            ax.scatter([ref["adapter_params"]], [ref["score"]], marker=marker, s=70, c=colour, label=name, zorder=3)
    chosen = report["chosen"]
    ax.scatter([chosen["adapter_params"]], [chosen["score"]], marker="*", s=180, c="tab:red", label="chosen", zorder=4)
    ax.set_xlabel("adapter parameters")
    ax.set_ylabel(report["evaluator"]["score"])
    ax.set_title(f"sub-adapter search: {report['strategy']} ({len(evals)} configurations)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)


def _build_report(
    space: SearchSpace,
    cfg: SearchConfig,
    result: SearchResult,
    scorer: Scorer,
    evaluator_info: dict,
    used_test_set: bool,
    seconds: float,
) -> SearchReport:
    references = {}
    for name in ("maximal", "heuristic", "minimal"):
        ev = scorer.get(getattr(space, name)())
        references[name] = ev.to_dict() if ev is not None else None
    return {
        "strategy": cfg.strategy,
        "evaluator": evaluator_info,
        "budget": cfg.budget,
        "patience": cfg.patience,
        "seed": cfg.seed,
        "used_test_set": used_test_set,
        "search_space": {
            "groups": len(space.groups),
            "size": space.size(),
            "max_rank": space.max_rank,
            "lora_alpha": space.lora_alpha,
        },
        "search_seconds": seconds,
        "num_evaluations": len(scorer.history),
        "chosen": result.best.to_dict(),
        "pareto_front": [ev.to_dict() for ev in pareto_front(scorer.history)],
        "references": references,
        "evaluations": [ev.to_dict() for ev in scorer.history],
    }


# ----------------------------------------------------------------------------------------------- search


def _fixed_config(strategy: str, space: SearchSpace) -> Optional[SubnetConfig]:
    """The configuration of a one-evaluation strategy (validated), None for a searching strategy."""
    if strategy in ("maximal", "minimal", "heuristic"):
        return getattr(space, strategy)()
    if strategy in SEARCH_STRATEGIES:
        return None
    raw = read_json(strategy, "sub-adapter configuration")
    if not isinstance(raw, dict):
        raise ShearsError(f"{strategy} must hold a JSON object {{group: width}}, e.g. a subnet_config.json")
    return space.validate(raw)


def _evaluator_spec(cfg: SearchConfig, adapter: Path) -> tuple[Optional[list[TaskSpec]], Optional[Path]]:
    if cfg.eval.strip().lower() == "loss":
        path = adapter / VALIDATION_FILE
        if not path.is_file():
            raise ShearsError(
                f"{adapter} has no {VALIDATION_FILE} for the loss proxy; pass --eval TASK=FILE or "
                "re-train with a validation split"
            )
        return None, path
    if "loss" in [s.strip().lower() for s in cfg.eval.split(",")]:
        raise ShearsError(f"--eval {cfg.eval!r} mixes 'loss' with tasks; use either 'loss' or task names")
    return parse_task_specs(cfg.eval), None


def select_subadapter(
    space: SearchSpace, score_fn: Callable[[SubnetConfig], float], config: Optional[SearchConfig] = None
) -> tuple[SearchResult, Scorer]:
    """In memory: the sub-adapter of ``space`` that ``config.strategy`` picks by ``score_fn`` (lower is better).

    ``score_fn`` scores one configuration ``{group: rank}`` (e.g. activate it on an
    :class:`~shears_nncf.elastic.ElasticityController` and return a validation loss); the returned scorer holds every
    evaluation (``scorer.history``), the maximal / heuristic / minimal references included when ``config.references``.
    """
    cfg = config or SearchConfig()
    fixed = _fixed_config(cfg.strategy, space)
    scorer = Scorer(space, score_fn, cfg.budget if fixed is None else 1)
    if fixed is not None:
        result = evaluate_one(space, scorer, fixed)
    elif cfg.strategy == "hill-climbing":
        result = hill_climb(space, scorer, cfg)
    else:
        result = nsga2(space, scorer, cfg)
    if fixed is None and cfg.references:
        for name in ("maximal", "heuristic", "minimal"):
            scorer(getattr(space, name)(), source="reference")
    scorer.close()
    return result, scorer


def search(
    model: str,
    adapter: Union[str, Path],
    output: Union[str, Path],
    config: Optional[SearchConfig] = None,
    trust_remote_code: bool = False,
) -> SearchReport:
    """Pick a sub-adapter of the super-adapter in ``adapter`` and extract it to ``output``; returns the report."""
    cfg = config or SearchConfig()
    adapter = Path(adapter)
    space = SearchSpace.load(adapter)
    _fixed_config(cfg.strategy, space)  # a bad strategy or CONFIG.json fails before any loading
    specs, val_path = _evaluator_spec(cfg, adapter)
    device = resolve_device(cfg.device)
    used_test_set = bool(specs) and any(s.is_test for s in specs)
    if used_test_set:
        tests = ", ".join(f"{s.task.name} ({s.path})" for s in specs if s.is_test)
        logger.warning(
            "!!! SUB-ADAPTER SELECTION USES A TEST SET: %s. Accuracy measured on it afterwards is optimistic; "
            "select with --eval loss (validation split) for an unbiased estimate. Recorded in %s.",
            tests,
            REPORT_NAME,
        )

    check_adapter_matches(model_skeleton(model, trust_remote_code), adapter)  # before any loading
    with atomic_output_dir(output) as tmp:
        start = time.perf_counter()
        base = load_model(model, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        peft_model, controller = load_elastic_lora(base, adapter)
        peft_model.to(device)
        peft_model.eval()
        if specs is None:
            records = load_validation(adapter)[: cfg.limit]
            score_fn = LossEvaluator(peft_model, controller, tokenizer, records, cfg.batch_size, cfg.cutoff_len)
            info = {
                "kind": "loss",
                "score": "validation loss",
                "data": str(val_path),
                "records": score_fn.n_records,
                "limit": cfg.limit,
            }
        else:
            score_fn = AccuracyEvaluator(peft_model, controller, tokenizer, specs, cfg.limit, cfg.batch_size)
            info = {
                "kind": "accuracy",
                "score": "error rate (1 - accuracy)",
                "limit": cfg.limit,
                "tasks": [{"task": s.task.name, "file": str(s.path), "test_set": s.is_test} for s in specs],
            }
        result, scorer = select_subadapter(space, score_fn, cfg)
        seconds = time.perf_counter() - start
        report = _build_report(space, cfg, result, scorer, info, used_test_set, seconds)
        logger.info(
            "chosen sub-adapter: score %.6g, %d adapter parameters (maximal: %d)",
            result.best.score,
            result.best.adapter_params,
            space.adapter_params(space.maximal()),
        )
        report["super_adapter"] = str(adapter.resolve())
        extract_subadapter(adapter, result.best.config, tmp, base_model_id(model, cfg.base_model_id))
        write_json(tmp / REPORT_NAME, report)
        plot_search(report, tmp / PLOT_NAME)
        write_adapter_card(tmp, model, adapter, report)
    return report
