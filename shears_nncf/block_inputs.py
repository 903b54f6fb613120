"""Calibration activations of one decoder block at a time: its inputs, and the statistics pruning needs.

The model runs up to the first block only once; each block is then run on the inputs it will see (the
outputs of the already-pruned block before it), with hooks summing ``||X_j||^2`` (Wanda) or ``X^T X``
(SparseGPT) per pruned Linear. Only the block being pruned is on the compute device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ShearsError

logger = logging.getLogger(__name__)


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


def catch_block_inputs(
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

    handles = [
        block.register_forward_pre_hook(functools.partial(record, i), with_kwargs=True)
        for i, block in enumerate(blocks)
    ]
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
                    raise ShearsError(
                        f"{type(model).__name__} never called its decoder blocks {prefix}; it cannot "
                        "be pruned block by block"
                    )
                hidden.append(seen["hidden"])
                calls.append(by_shape.setdefault(key, seen["calls"]))
    finally:
        for handle in handles:
            handle.remove()
    return hidden, calls


class InputStatistics:
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
