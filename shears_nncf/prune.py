"""Stage 1: Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Wanda scores each weight by ``|W_ij| * ||X_j||_2`` - its magnitude times the norm of the input feature it
multiplies, over all calibration tokens - and zeros the lowest scores of every output row. Blocks are pruned
in order: the statistics of block i come from the dense block i, and the pruned block i produces the inputs
of block i+1, so each block is pruned on the activations it will see. Only one block is on the compute device
at a time, and activations are kept for one block, so peak memory is the weights plus one block's activations.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import calibration_windows, default_calibration_source, describe_source
from .config import WandaConfig
from .errors import ShearsError
from .io import atomic_output_dir, write_json
from .models import (
    block_linears,
    check_positions,
    decoder_blocks,
    load_model,
    load_tokenizer,
    model_skeleton,
    prunable_linears,
    resolve_device,
    resolve_model_path,
    save_model,
)

logger = logging.getLogger(__name__)

REPORT_NAME = "sparsity_report.json"

#: A ``[n, seqlen]`` LongTensor of windows, an ``nncf.Dataset``, or an iterable of input_ids tensors / input dicts.
Calibration = Union[torch.Tensor, Iterable[Any]]


@dataclass
class SparsityReport:
    """What was pruned and how: the zero fraction of every pruned projection and of all of them together."""

    method: str
    pattern: str
    sparsity_level: float
    use_variant: bool
    modules: dict[str, float]
    zeros: int
    params: int
    seconds: float
    calibration: Optional[dict] = None
    #: the sparsity profile (uniform or OWL with its outlier ratios) and the zero fraction of every block
    layer_sparsity: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0

    def to_dict(self) -> dict:
        return {
            **self.extra,
            "method": self.method,
            "pattern": self.pattern,
            "sparsity_level": self.sparsity_level,
            "use_variant": self.use_variant,
            "sparsity": self.sparsity,
            "zeros": self.zeros,
            "params": self.params,
            "calibration": self.calibration,
            "layer_sparsity": self.layer_sparsity,
            "seconds": round(self.seconds, 3),
            "modules": self.modules,
        }


# ------------------------------------------------------------------------------------------ pruning masks


def _lowest(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest scores along the last dimension (exactly ``k``; topk breaks ties)."""
    return score.topk(k, dim=-1, largest=False, sorted=False).indices


def _variant_mask(score: torch.Tensor, sparsity: float, tol: float = 1e-3) -> torch.Tensor:
    """Wanda's variant: in every row prune the lowest scores whose running sum stays below ``alpha`` times the
    row's total; ``alpha`` is bisected in [0, 0.8] until the matrix is within ``tol`` of the target sparsity."""
    ordered = score.sort(dim=-1, stable=True).values
    cumulative, total = ordered.cumsum(-1), score.sum(-1, keepdim=True)

    def mask_for(alpha: float) -> torch.Tensor:
        count = (cumulative <= alpha * total).sum(-1, keepdim=True)
        threshold = ordered.gather(-1, (count - 1).clamp(min=0))
        return (score <= threshold) & (count > 0)

    lo, hi, alpha = 0.0, 0.8, 0.4
    mask = mask_for(alpha)
    while abs(mask.float().mean().item() - sparsity) > tol and hi - lo >= tol:
        if mask.float().mean().item() > sparsity:
            hi = alpha
        else:
            lo = alpha
        alpha = (lo + hi) / 2
        mask = mask_for(alpha)
    return mask


def zero_lowest_(
    weight: torch.Tensor,
    score: torch.Tensor,
    sparsity: float,
    nm: Optional[tuple[int, int]] = None,
    per_row: bool = True,
    use_variant: bool = False,
) -> torch.Tensor:
    """Zero, in place, the weights of an ``[out, in]`` matrix with the lowest scores; returns ``weight``.

    ``nm=(N, M)``: the N lowest of every M consecutive inputs of a row. Unstructured: exactly
    ``int(in * sparsity)`` per row, or ``int(out * in * sparsity)`` over the whole matrix when not ``per_row``
    (the magnitude baseline of the Wanda paper), or Wanda's adaptive per-row count with ``use_variant``.
    """
    rows, cols = weight.shape
    if nm is not None:
        n, m = nm
        weight.view(rows, cols // m, m).scatter_(-1, _lowest(score.view(rows, cols // m, m), n), 0)
    elif use_variant:
        weight.masked_fill_(_variant_mask(score, sparsity), 0)
    elif not per_row:
        weight.view(-1).scatter_(0, _lowest(score.flatten(), int(weight.numel() * sparsity)), 0)
    elif int(cols * sparsity) > 0:
        weight.scatter_(-1, _lowest(score, int(cols * sparsity)), 0)
    return weight


def pruning_mask(
    score: torch.Tensor, sparsity: float, nm: Optional[tuple[int, int]] = None, per_row: bool = True, use_variant: bool = False
) -> torch.Tensor:
    """Which entries :func:`zero_lowest_` zeros for these scores (True = pruned)."""
    return zero_lowest_(torch.ones_like(score), score, sparsity, nm, per_row, use_variant) == 0


# ----------------------------------------------------------------------------------- block inputs and statistics


class _Stop(Exception):
    """Raised by a hook to end a forward pass as soon as it has recorded what it needs."""


@dataclass
class _BlockCall:
    """How the model calls a block besides the hidden states: masks, rotary embeddings, positions ..."""

    args: tuple
    kwargs: dict
    hidden_as_keyword: bool = False

    @classmethod
    def split(cls, args: tuple, kwargs: dict) -> tuple[torch.Tensor, _BlockCall]:
        if args:
            return args[0], cls(tuple(args[1:]), dict(kwargs))
        kwargs = dict(kwargs)
        return kwargs.pop("hidden_states"), cls((), kwargs, hidden_as_keyword=True)

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.hidden_as_keyword:
            out = block(*self.args, hidden_states=hidden, **self.kwargs)
        else:
            out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def _blocks_as_identity(blocks: nn.ModuleList):
    """Let the model run through its blocks without computing them (their pre-hooks still fire)."""
    saved = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = _identity
    try:
        yield
    finally:
        for block, forward in zip(blocks, saved):
            del block.forward
            if forward is not None:
                block.forward = forward


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


@contextlib.contextmanager
def _non_block_modules_on(model: nn.Module, prefix: str, blocks: nn.ModuleList, device: torch.device):
    """Move everything but the decoder blocks (embeddings, rotary tables, norms) to ``device``, and back."""
    home = next(model.parameters()).device
    if _same_device(home, device):
        yield
        return
    parent_name, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_name)

    def move(to: torch.device) -> None:
        setattr(parent, attr, nn.ModuleList())
        try:
            model.to(to)
        finally:
            setattr(parent, attr, blocks)

    move(device)
    try:
        yield
    finally:
        move(home)


def _shape_key(batch: dict) -> Any:
    """Batches of one shape without padding get the same block arguments; a padded batch gets its own."""
    mask = batch.get("attention_mask")
    if mask is not None and not bool(mask.all()):
        return object()
    return tuple((k, tuple(v.shape)) for k, v in sorted(batch.items()) if torch.is_tensor(v))


def _catch_block_inputs(
    model: nn.Module, prefix: str, blocks: nn.ModuleList, batches: list[dict], device: torch.device
) -> tuple[list[torch.Tensor], list[list[_BlockCall]]]:
    """Block 0's hidden states for every batch, and every block's other call arguments for every batch.

    Forward pre-hooks record the arguments and raise to stop, as the reference "Catcher" does. The blocks are
    identities meanwhile, so for a batch shape not seen before the pass runs on to the last block at no cost:
    models with sliding-window layers (Gemma-2, Qwen2, ...) give different blocks different masks.
    """
    hidden: list[torch.Tensor] = []
    calls: list[list[_BlockCall]] = []
    by_shape: dict[Any, list[_BlockCall]] = {}
    seen: dict[str, Any] = {}

    def record(i: int, _module: nn.Module, args: tuple, kwargs: dict):
        h, call = _BlockCall.split(args, kwargs)
        if i == 0:
            seen["hidden"] = h
        seen["calls"].append(call)
        if i == seen["stop_at"]:
            raise _Stop

    handles = [block.register_forward_pre_hook(functools.partial(record, i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        with _non_block_modules_on(model, prefix, blocks, device), _blocks_as_identity(blocks), torch.inference_mode():
            for batch in tqdm(batches, desc="Calibration inputs", unit="batch", leave=False):
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                key = _shape_key(batch)
                seen.update(calls=[], stop_at=0 if key in by_shape else len(blocks) - 1)
                try:
                    model(**batch, use_cache=False)
                except _Stop:
                    pass
                else:
                    raise ShearsError(f"{type(model).__name__} never called its decoder blocks {prefix}; it cannot be pruned block by block")
                hidden.append(seen["hidden"])
                calls.append(by_shape.setdefault(key, seen["calls"]))
    finally:
        for handle in handles:
            handle.remove()
    return hidden, calls


class _InputStatistics:
    """Forward pre-hooks that add up, over all tokens entering each projection, ``x_j^2`` (``||X_j||_2^2``, Wanda)
    or ``x x^T`` (the Hessian ``X^T X`` of the layer-wise reconstruction loss, SparseGPT).

    Projections fed the same tensor (q/k/v, gate/up) share one reduction. Once every projection has seen its
    input the hook stops the pass: the rest of the block is not needed for statistics.
    """

    def __init__(self, linears: Mapping[str, nn.Linear], hessian: bool = False):
        self.hessian = hessian  # unscaled: the OBS update and the relative dampening do not depend on the scale
        shape = (lambda n: (n, n)) if hessian else (lambda n: (n,))
        self.sums = {name: torch.zeros(shape(m.in_features), device=m.weight.device) for name, m in linears.items()}
        self.seen: set[str] = set()
        self._last: tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None)
        self._handles = [m.register_forward_pre_hook(functools.partial(self._add, name)) for name, m in linears.items()]

    def _add(self, name: str, _module: nn.Module, args: tuple) -> None:
        x = args[0]
        if x is not self._last[0]:
            flat = x.reshape(-1, x.shape[-1]).float()
            # a matrix-vector product sums over tokens about twice as fast as .sum(0) on a CPU
            self._last = (x, flat.T @ flat if self.hessian else flat.new_ones(flat.shape[0]) @ flat.square())
        self.sums[name] += self._last[1]
        self.seen.add(name)
        if len(self.seen) == len(self.sums):
            raise _Stop

    def run(self, block: nn.Module, hidden: list[torch.Tensor], calls: list[_BlockCall]) -> dict[str, torch.Tensor]:
        try:
            for h, call in zip(hidden, calls):
                self.seen.clear()
                try:
                    call(block, h)
                except _Stop:
                    pass
                self._last = (None, None)
        finally:
            for handle in self._handles:
                handle.remove()
        for name, total in self.sums.items():
            if not total.any():
                logger.warning("%s received no calibration input; its scores fall back to magnitude", name)
                total.copy_(torch.eye(len(total), device=total.device) if self.hessian else torch.ones_like(total))
        return self.sums


# --------------------------------------------------------------------------------------------- SparseGPT


def sparsegpt_prune_(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: Optional[tuple[int, int]] = None,
                     blocksize: int = 128, damp: float = 0.01) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023) on one ``[out, in]`` weight, in place: prune and update the rest (OBS).

    Columns are visited left to right. Within each block of ``blocksize`` columns the weights with the lowest
    ``w^2 / [H^-1]_jj^2`` (over the block, or the N lowest of every M inputs of a row) are pruned; each visited column's
    error ``(w - q) / [H^-1]_jj`` is spread over the columns still to come along row j of the upper Cholesky factor of
    ``H^-1``, which is the OBS update with the inverse Hessian of the remaining columns. ``H`` is ``X^T X`` dampened
    by ``damp`` times its mean diagonal; inputs that never fired are pruned.
    """
    if nm is not None and blocksize % nm[1]:
        raise ShearsError(f"sparsegpt_blocksize {blocksize} is not a multiple of M={nm[1]} of the {nm[0]}:{nm[1]} pattern; "
                          "use e.g. 128")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        diag = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:  # the lowest scores of the whole block, chosen before the block's own updates
            mask1.view(-1)[_lowest((W1.square() / diag.square()[None]).flatten(), int(W1.numel() * sparsity))] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:  # N of the next M columns of every row, on the updated weights
                group = slice(i, i + nm[1])
                mask1[:, group] = pruning_mask(W1[:, group].square() / diag[group].square()[None], sparsity, nm)
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None]
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    with torch.no_grad():
        weight.copy_(W.to(weight.dtype))
    return weight


# --------------------------------------------------------------------------------------------------- OWL


def owl_sparsities(outlier_ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """OWL's per-block sparsity: blocks with more outliers are pruned less, around the global ``sparsity``.

    The ratios are rescaled to ``[0, 2 lam]`` and centred, so the mean sparsity over blocks is ``sparsity``.
    """
    d = torch.tensor(outlier_ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    scaled = (d - d.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(d)
    return [float(v) for v in sparsity - (scaled - scaled.mean())]


def _outlier_ratio(metrics: list[torch.Tensor], threshold: float) -> float:
    """The share of a block's Wanda scores above ``threshold`` times their mean (OWL's layer outlier distribution)."""
    flat = torch.cat([m.flatten() for m in metrics])
    return float((flat > threshold * flat.mean()).float().mean())


# --------------------------------------------------------------------------------------------------- driver


def _wanda_score(linear: nn.Linear, sq_norm: torch.Tensor) -> torch.Tensor:
    return linear.weight.abs().float().mul_(sq_norm.sqrt())  # |W_ij| * ||X_j||_2


def _prune_blocks(model: nn.Module, targets: list[dict[str, nn.Linear]], batches: list[dict], config: WandaConfig,
                  sparsities: Optional[list[float]] = None) -> list[float]:
    """Visit the blocks in order; block i's statistics come from the dense block i on the pruned block i-1's outputs.

    ``sparsities`` (one per block) prune; ``None`` only measures OWL's outlier ratio of every block, on the dense
    model (nothing is pruned), and returns them.
    """
    device = resolve_device(config.device)
    home = next(model.parameters()).device
    prefix, blocks = decoder_blocks(model)
    hidden, calls = _catch_block_inputs(model, prefix, blocks, batches, device)
    hessian = config.method == "sparsegpt" and sparsities is not None
    ratios = []
    desc = f"{config.method} {config.pattern}" if sparsities is not None else "OWL outlier statistics"
    for i, block in enumerate(tqdm(blocks, desc=desc, unit="block")):
        block.to(device)
        block_calls = [per_batch[i] for per_batch in calls]
        with torch.inference_mode():
            if targets[i]:
                stats = _InputStatistics(targets[i], hessian=hessian).run(block, hidden, block_calls)  # dense block i
                if sparsities is None:
                    ratios.append(_outlier_ratio([_wanda_score(m, stats[n]) for n, m in targets[i].items()],
                                                 config.owl_threshold))
                for name, linear in targets[i].items() if sparsities is not None else ():
                    if hessian:
                        sparsegpt_prune_(linear.weight, stats[name], sparsities[i], config.nm, config.sparsegpt_blocksize,
                                         config.sparsegpt_damp)
                    else:
                        zero_lowest_(linear.weight, _wanda_score(linear, stats[name]), sparsities[i], config.nm,
                                     use_variant=config.use_variant)
            if i + 1 < len(blocks):
                for b, call in enumerate(block_calls):
                    hidden[b] = call(block, hidden[b])  # the (pruned) block i feeds block i+1
        block.to(home)
    return ratios


def _magnitude(targets: list[dict[str, nn.Linear]], config: WandaConfig) -> None:
    """The baseline: lowest |W| over each whole matrix (or within each group of M for N:M); no data needed."""
    with torch.no_grad():
        for linears in tqdm(targets, desc=f"Magnitude {config.pattern}", unit="block"):
            for linear in linears.values():
                zero_lowest_(linear.weight, linear.weight.abs(), config.sparsity_level, config.nm, per_row=False)


def _as_batches(calibration: Calibration, batch_size: int) -> list[dict]:
    """Normalise windows / an ``nncf.Dataset`` / an iterable of inputs into keyword inputs of the model."""
    if hasattr(calibration, "get_inference_data"):  # nncf.Dataset: items after its transform
        items: Iterable[Any] = calibration.get_inference_data()
    elif torch.is_tensor(calibration):
        items = (calibration if calibration.dim() == 2 else calibration[None]).split(batch_size)
    else:
        items = calibration
    batches = []
    for item in items:
        if isinstance(item, Mapping):
            batch = {k: torch.as_tensor(v) if not torch.is_tensor(v) and hasattr(v, "__array__") else v for k, v in item.items()}
        else:
            ids = torch.as_tensor(item)
            batch = {"input_ids": ids if ids.dim() == 2 else ids[None]}
        if "input_ids" not in batch and "inputs_embeds" not in batch:
            raise ShearsError(f"a calibration item has keys {', '.join(batch)} but no input_ids; give token windows")
        batches.append(batch)
    if not batches:
        raise ShearsError("the calibration data is empty; give at least one window of token ids")
    return batches


def _check_nm(targets: list[dict[str, nn.Linear]], nm: Optional[tuple[int, int]]) -> None:
    if nm is None:
        return
    for linears in targets:
        for name, linear in linears.items():
            if linear.in_features % nm[1]:
                raise ShearsError(
                    f"{name} has {linear.in_features} inputs, not a multiple of {nm[1]}, so the {nm[0]}:{nm[1]} pattern "
                    "cannot be applied; add it to ignored_scopes or use the unstructured pattern"
                )


def sparsify(model: nn.Module, calibration: Optional[Calibration] = None, config: Optional[WandaConfig] = None) -> SparsityReport:
    """Prune a decoder-only causal LM in place and report the zeros; ``calibration`` is unused by magnitude.

    ``calibration`` is a ``[n, seqlen]`` LongTensor of token windows (run ``config.batch_size`` at a time), an
    ``nncf.Dataset`` or any iterable of ``input_ids`` tensors or model-input dicts (one model call each).
    Embeddings and ``lm_head`` are never touched: only ``nn.Linear`` modules inside the decoder blocks,
    filtered by ``config.target_modules`` / ``config.ignored_scopes``.
    """
    config = config or WandaConfig()
    start = time.perf_counter()
    profile: dict = {"profile": "uniform"}
    prunable_linears(model, config.target_modules, config.ignored_scopes)  # a clear error when nothing matches
    prefix, blocks = decoder_blocks(model)
    targets = [block_linears(b, config.target_modules, config.ignored_scopes, prefix=f"{prefix}.{i}") for i, b in enumerate(blocks)]
    _check_nm(targets, config.nm)
    was_training = model.training
    model.eval()
    try:
        if config.method == "magnitude":
            _magnitude(targets, config)
        else:
            if calibration is None:
                raise ShearsError(f"{config.method} needs calibration data; pass token windows (see calibration.calibration_windows)")
            batches = _as_batches(calibration, config.batch_size)
            if config.sparsity_profile == "owl":
                outliers = _prune_blocks(model, targets, batches, config)
                sparsities = owl_sparsities(outliers, config.sparsity_level, config.owl_lambda)
                profile = {"profile": "owl", "threshold": config.owl_threshold, "lambda": config.owl_lambda,
                           "outlier_ratio": outliers}
            else:
                sparsities = [config.sparsity_level] * len(blocks)
            _prune_blocks(model, targets, batches, config, sparsities)
    finally:
        model.train(was_training)
    modules = {name: m.weight.numel() - torch.count_nonzero(m.weight).item() for linears in targets for name, m in linears.items()}
    sizes = {name: m.weight.numel() for linears in targets for name, m in linears.items()}
    report = SparsityReport(
        method=config.method, pattern=config.pattern, sparsity_level=config.sparsity_level, use_variant=config.use_variant,
        modules={name: zeros / sizes[name] for name, zeros in modules.items()},
        zeros=sum(modules.values()), params=sum(sizes.values()), seconds=time.perf_counter() - start,
        layer_sparsity=profile | {"block_sparsity": [sum(modules[n] for n in t) / max(1, sum(sizes[n] for n in t))
                                                     for t in targets]},
    )
    logger.info("%s %s: %.2f%% zeros over %d projections in %.1f s", config.method, config.pattern,
                100 * report.sparsity, len(modules), report.seconds)
    return report


def prune(model: Union[str, os.PathLike], output: Union[str, os.PathLike], config: Optional[WandaConfig] = None,
          *, trust_remote_code: bool = False) -> SparsityReport:
    """Load a model, sparsify it, and save a Hugging Face folder (tokenizer included) plus ``sparsity_report.json``.

    The zeros are plain zeros in the saved safetensors weights; a failure leaves no output folder behind.
    """
    config = config or WandaConfig()
    resolve_device(config.device)
    path = resolve_model_path(os.fspath(model))
    # module patterns are checked on the weightless module tree: a typo fails before anything is loaded
    skeleton = model_skeleton(path, trust_remote_code)
    prunable_linears(skeleton, config.target_modules, config.ignored_scopes)
    if config.method != "magnitude":
        check_positions(skeleton, config.seqlen, "--seqlen")
    source = (config.calibration or default_calibration_source()) if config.method != "magnitude" else None
    with atomic_output_dir(output) as tmp:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        windows = calibration_windows(tokenizer, source, config.nsamples, config.seqlen, config.seed) if source else None
        lm = load_model(path, trust_remote_code=trust_remote_code)
        report = sparsify(lm, windows, config)
        if source is not None:
            report.calibration = {"source": describe_source(source), "nsamples": config.nsamples,
                                  "seqlen": config.seqlen, "seed": config.seed}
        report.extra = {"model": os.fspath(model)}
        save_model(lm, tokenizer, tmp)
        write_json(tmp / REPORT_NAME, report.to_dict())
    logger.info("Sparse model saved to %s", output)
    return report
