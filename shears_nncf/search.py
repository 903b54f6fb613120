"""Stage 3: find a good sub-adapter inside the NLS super-adapter and extract it as a stock PEFT adapter.

A strategy is a function of a :data:`ScoreFn` (configuration -> score, lower is better), so it can be
tested on synthetic scores and run on any evaluator. Every strategy goes through a :class:`Scorer`, which
memoizes (a configuration is never scored twice), enforces the evaluation budget and keeps the history
that ``search_report.json`` and ``search.png`` are made from.

Strategies: ``maximal`` / ``minimal`` / ``heuristic`` / a given ``CONFIG.json`` (one evaluation each),
``hill-climbing`` (from the heuristic, moving only on improvement, keeping the best seen) and ``nsga2``
(pymoo's NSGA-II over (score, adapter parameters), reporting the Pareto front).

Evaluators: the validation loss of the super-adapter folder's ``validation.jsonl`` (a cheap proxy) or
task accuracy by greedy generation (:mod:`shears_nncf.tasks`).

Extraction slices ``A[:r]`` / ``B[:, :r]`` per module and writes ``rank_pattern`` plus
``alpha_pattern = alpha * r / max_rank``, so that PEFT's scaling ``alpha_pattern / r`` stays the
super-adapter's ``alpha / max_rank`` and the loaded model equals the super-adapter with that configuration.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .adapters import check_adapter_matches, is_masked, mark_masked
from .config import SEARCH_STRATEGIES, SearchConfig
from .datasets import IGNORE_INDEX, VALIDATION_FILE, load_validation, normalize_record, tokenize_record
from .elastic import ELASTIC_CONFIG_NAME, SearchSpace, SubnetConfig, load_elastic_lora
from .errors import ShearsError
from .io import atomic_output_dir, read_json, write_json
from .models import load_model, load_tokenizer, model_skeleton, resolve_device
from .tasks import TaskSpec, load_records, make_generate_fn, parse_task_specs, score_task

logger = logging.getLogger(__name__)

#: Scores a configuration (lower is better): a float, or ``(float, metrics dict)``.
ScoreFn = Callable[[SubnetConfig], Union[float, tuple[float, dict]]]

SUBNET_CONFIG_NAME = "subnet_config.json"
REPORT_NAME = "search_report.json"
PLOT_NAME = "search.png"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# ------------------------------------------------------------------------------------------ bookkeeping


@dataclass
class Evaluation:
    config: SubnetConfig
    score: float
    adapter_params: int
    seconds: float
    metrics: dict = field(default_factory=dict)
    source: str = "strategy"  # "strategy" or "reference" (scored for the report only, outside the budget)

    @property
    def rank(self) -> tuple[float, int]:
        """Order of preference: lower score, then fewer adapter parameters; NaN ranks last."""
        return (math.inf if math.isnan(self.score) else self.score, self.adapter_params)

    def to_dict(self) -> dict:
        return asdict(self)


class Scorer:
    """Memoizing, budgeted wrapper around a :data:`ScoreFn`; keeps every evaluation in ``history``."""

    def __init__(self, space: SearchSpace, score_fn: ScoreFn, budget: Optional[int] = None, progress: bool = True):
        if budget is not None and budget < 1:
            raise ShearsError(f"search budget must be at least 1, got {budget}")
        self.space = space
        self.score_fn = score_fn
        self.budget = budget
        self.history: list[Evaluation] = []
        self._memo: dict[tuple[int, ...], Evaluation] = {}
        self._counted = 0
        self._bar = tqdm(total=budget, desc="search", unit="config", leave=False) if progress else None

    def _key(self, config: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(int(config[name]) for name in self.space.group_names)

    def seen(self, config: Mapping[str, int]) -> bool:
        return self._key(config) in self._memo

    def get(self, config: Mapping[str, int]) -> Optional[Evaluation]:
        return self._memo.get(self._key(config))

    @property
    def n_evals(self) -> int:
        """Evaluations counted against the budget."""
        return self._counted

    @property
    def remaining(self) -> float:
        return math.inf if self.budget is None else self.budget - self._counted

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def __call__(self, config: Mapping[str, int], source: str = "strategy") -> Optional[Evaluation]:
        """The evaluation of ``config``: memoized, or computed if the budget allows (references always are)."""
        config = self.space.validate(config)
        key = self._key(config)
        if key in self._memo:
            return self._memo[key]
        counted = source == "strategy"
        if counted and self.exhausted:
            return None
        start = time.perf_counter()
        out = self.score_fn(config)
        score, metrics = out if isinstance(out, tuple) else (out, {})
        ev = Evaluation(dict(config), float(score), self.space.adapter_params(config), time.perf_counter() - start,
                        dict(metrics), source)
        self._memo[key] = ev
        self.history.append(ev)
        if counted:
            self._counted += 1
            if self._bar is not None:
                self._bar.update(1)
        logger.info("evaluation %d (%s): score %.6g, %d adapter parameters, %.2f s",
                    len(self.history), source, ev.score, ev.adapter_params, ev.seconds)
        return ev

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class SearchResult:
    best: Evaluation
    evaluations: list[Evaluation]
    front: list[Evaluation]


def pareto_front(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """Non-dominated evaluations for (score, adapter parameters), both minimised; sorted by parameters."""
    if not evaluations:
        return []
    import numpy as np
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.array([ev.rank for ev in evaluations], dtype=float)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return sorted((evaluations[i] for i in idx), key=lambda ev: (ev.adapter_params, ev.rank))


def _as_scorer(space: SearchSpace, score_fn: Union[ScoreFn, Scorer], budget: Optional[int]) -> Scorer:
    return score_fn if isinstance(score_fn, Scorer) else Scorer(space, score_fn, budget)


def _result(scorer: Scorer, best: Evaluation) -> SearchResult:
    scorer.close()
    return SearchResult(best=best, evaluations=list(scorer.history), front=pareto_front(scorer.history))


# ------------------------------------------------------------------------------------------- strategies


def neighbours(space: SearchSpace, config: Mapping[str, int]) -> list[SubnetConfig]:
    """Configurations that move one group's width one step along its list of widths."""
    out = []
    for group in space.groups:
        i = group.widths.index(config[group.name])
        for j in (i - 1, i + 1):
            if 0 <= j < len(group.widths):
                out.append({**config, group.name: group.widths[j]})
    return out


def evaluate_one(space: SearchSpace, score_fn: Union[ScoreFn, Scorer], config: Mapping[str, int]) -> SearchResult:
    """The single-configuration strategies: maximal, minimal, heuristic or a given configuration."""
    scorer = _as_scorer(space, score_fn, None)
    return _result(scorer, scorer(space.validate(config)))


def hill_climb(
    space: SearchSpace,
    score_fn: Union[ScoreFn, Scorer],
    budget: int = 50,
    patience: int = 3,
    neighbours_per_turn: int = 8,
    seed: int = 0,
    start: Optional[Mapping[str, int]] = None,
) -> SearchResult:
    """Stochastic hill-climbing from the heuristic configuration.

    Each turn scores up to ``neighbours_per_turn`` not-yet-scored neighbours of the best configuration
    (picked at random) and moves to the best of the turn only if it beats the best seen so far; a turn
    without improvement counts towards ``patience``. It stops then, when the budget is spent, or when every
    neighbour of the best configuration is known and none is better (a local optimum).
    """
    if patience < 1 or neighbours_per_turn < 1:
        raise ShearsError(f"patience and neighbours per turn must be positive, got {patience} and {neighbours_per_turn}")
    scorer = _as_scorer(space, score_fn, budget)
    rng = random.Random(seed)
    best = scorer(start if start is not None else space.heuristic())
    if best is None:
        raise ShearsError("the search budget is spent before the first evaluation; raise --budget")
    stale = 0
    while stale < patience and not scorer.exhausted:
        around = neighbours(space, best.config)
        known = [scorer.get(c) for c in around if scorer.seen(c)]
        fresh = [c for c in around if not scorer.seen(c)]
        rng.shuffle(fresh)
        scored = [ev for ev in (scorer(c) for c in fresh[:neighbours_per_turn]) if ev is not None]
        turn = known + scored
        pick = min(turn, key=lambda ev: ev.rank) if turn else None
        if pick is not None and pick.rank < best.rank:
            logger.info("hill-climbing: improved to %.6g (%d adapter parameters)", pick.score, pick.adapter_params)
            best, stale = pick, 0
        elif not fresh:
            logger.info("hill-climbing: local optimum, all %d neighbours are scored and none is better", len(around))
            break
        else:
            stale += 1
    return _result(scorer, best)


def nsga2(
    space: SearchSpace,
    score_fn: Union[ScoreFn, Scorer],
    budget: int = 50,
    population: int = 8,
    seed: int = 0,
    patience: int = 3,
) -> SearchResult:
    """NSGA-II (pymoo) over one integer per group (index into its widths), objectives (score, adapter params).

    The first generation holds the heuristic, maximal and minimal configurations plus random ones. The
    budget counts configurations actually scored: offspring already seen are answered from the memo and
    a generation is cut short when the budget runs out. ``patience`` generations with nothing new end it.
    """
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.core.termination import NoTermination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    if population < 2:
        raise ShearsError(f"NSGA-II needs a population of at least 2, got {population}")
    scorer = _as_scorer(space, score_fn, budget)
    free = [g for g in space.groups if len(g.widths) > 1]
    if not free:
        return _result(scorer, scorer(space.maximal()))
    fixed = space.maximal()

    def to_config(x) -> SubnetConfig:
        return {**fixed, **{g.name: g.widths[int(round(float(v)))] for g, v in zip(free, x)}}

    def to_x(config: Mapping[str, int]) -> list[int]:
        return [g.widths.index(config[g.name]) for g in free]

    class _Problem(ElementwiseProblem):
        def __init__(self):
            super().__init__(n_var=len(free), n_obj=2, xl=np.zeros(len(free)),
                             xu=np.array([len(g.widths) - 1 for g in free], dtype=float))

        def _evaluate(self, x, out, *args, **kwargs):
            ev = scorer(to_config(x))
            out["F"] = [ev.rank[0], float(ev.adapter_params)]

    rng = np.random.default_rng(seed)
    seeds = [to_x(c) for c in (space.heuristic(), space.maximal(), space.minimal())]
    rows: list[list[int]] = []
    for row in seeds + [list(rng.integers(0, [len(g.widths) for g in free])) for _ in range(4 * population)]:
        if row not in rows:
            rows.append([int(v) for v in row])
        if len(rows) == population:
            break
    problem = _Problem()
    algorithm = NSGA2(
        pop_size=population, sampling=np.array(rows, dtype=float),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
    stale = 0
    while not scorer.exhausted and stale < patience and len(scorer.history) < space.size():
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:
            break
        keep, new = [], 0
        for i, x in enumerate(pop.get("X")):
            fresh = not scorer.seen(to_config(x))
            if fresh and new >= scorer.remaining:
                break
            keep.append(i)
            new += fresh
        if not keep:
            break
        pop = pop[keep]
        algorithm.evaluator.eval(problem, pop)
        algorithm.tell(infills=pop)
        stale = 0 if new else stale + 1
    strategy_evals = [ev for ev in scorer.history if ev.source == "strategy"]
    best = min(strategy_evals, key=lambda ev: ev.rank)
    return _result(scorer, best)


# ------------------------------------------------------------------------------------------- evaluators


class LossEvaluator:
    """Mean token cross-entropy of the responses in the validation split (lower is better)."""

    def __init__(self, model, controller, tokenizer, records: list[dict], batch_size: int = 8, cutoff_len: int = 256):
        self.model = model
        self.controller = controller
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        examples = []
        for r in records:  # tokenized exactly as training did: prompt masked, EOS appended
            enc = tokenize_record(normalize_record(r, "validation record"), tokenizer, cutoff_len)
            if any(t != IGNORE_INDEX for t in enc["labels"]):
                examples.append((enc["input_ids"], enc["labels"]))
        if not examples:
            raise ShearsError(f"no validation record keeps response tokens within {cutoff_len} tokens; raise cutoff_len")
        if len(examples) < len(records):
            logger.warning("%d of %d validation records have no response token within cutoff_len=%d and are not scored",
                           len(records) - len(examples), len(records), cutoff_len)
        examples.sort(key=lambda e: len(e[0]))
        self.batches = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (x, y) in enumerate(chunk):
                ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            self.batches.append((ids, mask, labels))
        self.n_records = len(examples)

    @torch.no_grad()
    def __call__(self, config: SubnetConfig) -> tuple[float, dict]:
        self.controller.activate(config)
        device = next(self.model.parameters()).device
        total, count = 0.0, 0
        for ids, mask, labels in self.batches:
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            target = labels[:, 1:].to(device)
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            count += int((target != IGNORE_INDEX).sum())
        loss = total / count
        return loss, {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}


class AccuracyEvaluator:
    """Task accuracy by greedy generation; the score is the error rate ``1 - mean accuracy``."""

    def __init__(self, model, controller, tokenizer, specs: list[TaskSpec], limit: Optional[int] = None, batch_size: int = 8):
        self.controller = controller
        self.specs = specs
        self.records = {s.task.name: load_records(s.path, limit) for s in specs}
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


def extract_subadapter(adapter_dir: Union[str, Path], config: Mapping[str, int], out_dir: Union[str, Path]) -> Path:
    """Write the sub-adapter ``config`` of a super-adapter folder as a plain PEFT LoRA folder.

    The result loads with ``PeftModel.from_pretrained(base, out_dir)`` and equals the super-adapter with
    ``config`` active. Also writes ``subnet_config.json``.
    """
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    space = SearchSpace.load(adapter_dir)
    config = space.validate(config)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise ShearsError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}; pass the super-adapter folder written by 'shears-nncf train'")
    ranks = space.module_ranks(config)
    sliced = {}
    for key, tensor in load_file(str(weights_path)).items():
        module, kind = _split_lora_key(key)
        if module is None:
            sliced[key] = tensor
            continue
        if module not in ranks:
            raise ShearsError(f"the super-adapter has weights for {module}, which its {ELASTIC_CONFIG_NAME} does not list; re-create it")
        r = ranks[module]
        sliced[key] = (tensor[:r] if kind == "lora_A" else tensor[:, :r]).contiguous()

    lora_config = LoraConfig.from_pretrained(str(adapter_dir))
    elastic = {m: r for g in space.groups for m in g.modules for r in [config[g.name]]}
    lora_config.r = space.max_rank
    lora_config.lora_alpha = space.lora_alpha
    lora_config.rank_pattern = dict(elastic)
    lora_config.alpha_pattern = {m: space.lora_alpha * r / space.max_rank for m, r in elastic.items()}
    lora_config.inference_mode = True

    out_dir.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(str(out_dir))
    save_file(sliced, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json(out_dir / SUBNET_CONFIG_NAME, config)
    if is_masked(adapter_dir):
        mark_masked(out_dir)
    return out_dir


# ------------------------------------------------------------------------------------------ report/plot


def plot_search(report: dict, path: Union[str, Path]) -> None:
    """Score vs adapter parameters of every evaluation; the Pareto front, references and choice marked."""
    from matplotlib.figure import Figure

    evals = report["evaluations"]
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.scatter([e["adapter_params"] for e in evals], [e["score"] for e in evals], s=14, c="0.6", label="evaluated")
    front = report["pareto_front"]
    ax.plot([e["adapter_params"] for e in front], [e["score"] for e in front], "o-", c="tab:blue", ms=5, label="Pareto front")
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


def _build_report(space: SearchSpace, cfg: SearchConfig, result: SearchResult, scorer: Scorer, evaluator_info: dict,
                  used_test_set: bool, seconds: float) -> dict:
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
        "search_space": {"groups": len(space.groups), "size": space.size(), "max_rank": space.max_rank,
                         "lora_alpha": space.lora_alpha},
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
            raise ShearsError(f"{adapter} has no {VALIDATION_FILE} for the loss proxy; pass --eval TASK=FILE or re-train with a validation split")
        return None, path
    if "loss" in [s.strip().lower() for s in cfg.eval.split(",")]:
        raise ShearsError(f"--eval {cfg.eval!r} mixes 'loss' with tasks; use either 'loss' or task names")
    return parse_task_specs(cfg.eval), None


def search(model: str, adapter: Union[str, Path], output: Union[str, Path], config: Optional[SearchConfig] = None,
           trust_remote_code: bool = False) -> dict:
    """Pick a sub-adapter of the super-adapter in ``adapter`` and extract it to ``output``; returns the report."""
    cfg = config or SearchConfig()
    adapter = Path(adapter)
    space = SearchSpace.load(adapter)
    fixed = _fixed_config(cfg.strategy, space)
    specs, val_path = _evaluator_spec(cfg, adapter)
    device = resolve_device(cfg.device)
    used_test_set = bool(specs) and any(s.is_test for s in specs)
    if used_test_set:
        tests = ", ".join(f"{s.task.name} ({s.path})" for s in specs if s.is_test)
        logger.warning("!!! SUB-ADAPTER SELECTION USES A TEST SET: %s. Accuracy measured on it afterwards is optimistic; "
                       "select with --eval loss (validation split) for an unbiased estimate. Recorded in %s.", tests, REPORT_NAME)

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
            info = {"kind": "loss", "score": "validation loss", "data": str(val_path), "records": score_fn.n_records,
                    "limit": cfg.limit}
        else:
            score_fn = AccuracyEvaluator(peft_model, controller, tokenizer, specs, cfg.limit, cfg.batch_size)
            info = {"kind": "accuracy", "score": "error rate (1 - accuracy)", "limit": cfg.limit,
                    "tasks": [{"task": s.task.name, "file": str(s.path), "test_set": s.is_test} for s in specs]}
        scorer = Scorer(space, score_fn, cfg.budget if fixed is None else 1)
        if fixed is not None:
            result = evaluate_one(space, scorer, fixed)
        elif cfg.strategy == "hill-climbing":
            result = hill_climb(space, scorer, cfg.budget, cfg.patience, cfg.neighbours, cfg.seed)
        else:
            result = nsga2(space, scorer, cfg.budget, cfg.population, cfg.seed, cfg.patience)
        if fixed is None and cfg.references:
            for name in ("maximal", "heuristic", "minimal"):
                scorer(getattr(space, name)(), source="reference")
        scorer.close()
        seconds = time.perf_counter() - start
        report = _build_report(space, cfg, result, scorer, info, used_test_set, seconds)
        logger.info("chosen sub-adapter: score %.6g, %d adapter parameters (maximal: %d)", result.best.score,
                    result.best.adapter_params, space.adapter_params(space.maximal()))
        extract_subadapter(adapter, result.best.config, tmp)
        write_json(tmp / REPORT_NAME, report)
        plot_search(report, tmp / PLOT_NAME)
    return report
