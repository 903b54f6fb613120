"""Search strategies over a sub-adapter space, as functions of a score: testable on synthetic scores.

A strategy takes a :data:`ScoreFn` (configuration -> score, lower is better) and goes through a
:class:`Scorer`, which memoizes (a configuration is never scored twice), enforces the evaluation budget and
keeps the history that the search report is made from. ``hill_climb`` starts from the heuristic and moves
only on improvement, keeping the best seen; ``nsga2`` is pymoo's NSGA-II over (score, adapter parameters),
reporting the Pareto front; ``evaluate_one`` scores a single configuration (maximal, minimal, heuristic or a
given one).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

from tqdm.auto import tqdm

from .config import SearchConfig
from .elastic import SearchSpace, SubnetConfig
from .errors import ShearsError
from .options import check_value

logger = logging.getLogger(__name__)

#: Scores a configuration (lower is better): a float, or ``(float, metrics dict)``.
ScoreFn = Callable[[SubnetConfig], Union[float, tuple[float, dict]]]


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
    def preference(self) -> tuple[float, int]:
        """Order of preference: lower score, then fewer adapter parameters; NaN ranks last."""
        return (math.inf if math.isnan(self.score) else self.score, self.adapter_params)

    def to_dict(self) -> dict:
        return asdict(self)


class Scorer:
    """Memoizing, budgeted wrapper around a :data:`ScoreFn`; keeps every evaluation in ``history``."""

    def __init__(self, space: SearchSpace, score_fn: ScoreFn, budget: Optional[int] = None, progress: bool = True):
        if budget is not None:
            check_value(SearchConfig, "budget", budget)
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
        ev = Evaluation(
            dict(config),
            float(score),
            self.space.adapter_params(config),
            time.perf_counter() - start,
            dict(metrics),
            source,
        )
        self._memo[key] = ev
        self.history.append(ev)
        if counted:
            self._counted += 1
            if self._bar is not None:
                self._bar.update(1)
        logger.info(
            "evaluation %d (%s): score %.6g, %d adapter parameters, %.2f s",
            len(self.history),
            source,
            ev.score,
            ev.adapter_params,
            ev.seconds,
        )
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

    F = np.array([ev.preference for ev in evaluations], dtype=float)
    idx = NonDominatedSorting().do(F, only_non_dominated_front=True)
    return sorted((evaluations[i] for i in idx), key=lambda ev: (ev.adapter_params, ev.preference))


def _as_scorer(space: SearchSpace, score_fn: Union[ScoreFn, Scorer], budget: Optional[int]) -> Scorer:
    return score_fn if isinstance(score_fn, Scorer) else Scorer(space, score_fn, budget)


def _result(scorer: Scorer, best: Evaluation) -> SearchResult:
    scorer.close()
    return SearchResult(best=best, evaluations=list(scorer.history), front=pareto_front(scorer.history))


# ------------------------------------------------------------------------------------------- strategies


def neighbours(space: SearchSpace, config: Mapping[str, int]) -> list[SubnetConfig]:
    """Configurations that move one group's rank one step along its list of ranks."""
    out = []
    for group in space.groups:
        i = group.ranks.index(config[group.name])
        for j in (i - 1, i + 1):
            if 0 <= j < len(group.ranks):
                out.append({**config, group.name: group.ranks[j]})
    return out


def evaluate_one(space: SearchSpace, score_fn: Union[ScoreFn, Scorer], config: Mapping[str, int]) -> SearchResult:
    """The single-configuration strategies: maximal, minimal, heuristic or a given configuration."""
    scorer = _as_scorer(space, score_fn, None)
    return _result(scorer, scorer(space.validate(config)))


def hill_climb(
    space: SearchSpace,
    score_fn: Union[ScoreFn, Scorer],
    config: Optional[SearchConfig] = None,
    start: Optional[Mapping[str, int]] = None,
) -> SearchResult:
    """Stochastic hill-climbing from the heuristic configuration (or ``start``).

    Each turn scores up to ``config.neighbours`` not-yet-scored neighbours of the best configuration (picked
    at random) and moves to the best of the turn only if it beats the best seen so far; a turn without
    improvement counts towards ``config.patience``. It stops then, when ``config.budget`` is spent, or when
    every neighbour of the best configuration is known and none is better (a local optimum).
    """
    config = config or SearchConfig(strategy="hill-climbing")
    patience, neighbours_per_turn = config.patience, config.neighbours
    scorer = _as_scorer(space, score_fn, config.budget)
    rng = random.Random(config.seed)
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
        pick = min(turn, key=lambda ev: ev.preference) if turn else None
        if pick is not None and pick.preference < best.preference:
            logger.info("hill-climbing: improved to %.6g (%d adapter parameters)", pick.score, pick.adapter_params)
            best, stale = pick, 0
        elif not fresh:
            logger.info("hill-climbing: local optimum, all %d neighbours are scored and none is better", len(around))
            break
        else:
            stale += 1
    return _result(scorer, best)


def nsga2(space: SearchSpace, score_fn: Union[ScoreFn, Scorer], config: Optional[SearchConfig] = None) -> SearchResult:
    """NSGA-II (pymoo) over one integer per group (index into its ranks), objectives (score, adapter params).

    The first generation of ``config.population`` holds the heuristic, maximal and minimal configurations plus
    random ones. ``config.budget`` counts configurations actually scored: offspring already seen are answered
    from the memo and a generation is cut short when the budget runs out. ``config.patience`` generations with
    nothing new end it.
    """
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.core.termination import NoTermination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    config = config or SearchConfig(strategy="nsga2")
    population, seed, patience = config.population, config.seed, config.patience
    scorer = _as_scorer(space, score_fn, config.budget)
    free = [g for g in space.groups if len(g.ranks) > 1]
    if not free:
        return _result(scorer, scorer(space.maximal()))
    single_rank = space.maximal()  # the groups with one rank keep it; only the free ones are searched

    def to_config(x) -> SubnetConfig:
        return {**single_rank, **{g.name: g.ranks[int(round(float(v)))] for g, v in zip(free, x)}}

    def to_x(config: Mapping[str, int]) -> list[int]:
        return [g.ranks.index(config[g.name]) for g in free]

    class _Problem(ElementwiseProblem):
        def __init__(self):
            super().__init__(
                n_var=len(free),
                n_obj=2,
                xl=np.zeros(len(free)),
                xu=np.array([len(g.ranks) - 1 for g in free], dtype=float),
            )

        def _evaluate(self, x, out, *args, **kwargs):
            ev = scorer(to_config(x))
            out["F"] = [ev.preference[0], float(ev.adapter_params)]

    rng = np.random.default_rng(seed)
    seeds = [to_x(c) for c in (space.heuristic(), space.maximal(), space.minimal())]
    rows: list[list[int]] = []
    for row in seeds + [list(rng.integers(0, [len(g.ranks) for g in free])) for _ in range(4 * population)]:
        if row not in rows:
            rows.append([int(v) for v in row])
        if len(rows) == population:
            break
    problem = _Problem()
    algorithm = NSGA2(
        pop_size=population,
        sampling=np.array(rows, dtype=float),
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
    best = min(strategy_evals, key=lambda ev: ev.preference)
    return _result(scorer, best)
