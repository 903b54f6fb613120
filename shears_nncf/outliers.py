"""W8A8 for Linears whose inputs have outlier channels: those few channels get a MatMul of their own.

OpenVINO's CPU int8 kernels, the sparse one included, take per-tensor int8 activations. An LLM's MLP output
projection sees a few input channels hundreds of times larger than the rest, so one scale either clips them or rounds every other channel to zero, and SmoothQuant cannot move
that much into per-row int8 weights. Kept whole with float inputs, the layer loses the sparse kernel. So before
tracing, each such Linear becomes ``W[:, keep] @ x[keep] + W[:, out] @ x[out]`` (LLM.int8()'s decomposition, with
the channels picked once from calibration activations): the main MatMul keeps every pruned zero and goes W8A8 on
the sparse kernel; the ``k`` outlier channels, a multiple of 64 so the main part keeps the kernel's 64-wide
shapes, go through a small MatMul with float inputs (int8 weight-only). The function is unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .ir import sparse_kernel_crashes

#: The sparse kernel's tile: both dims of a W8A8 weight must be multiples of it.
KERNEL_TILE = 64


class OutlierSplitLinear(nn.Linear):
    """A Linear over the non-outlier input channels (its own ``weight``) plus ``outliers``, a Linear over the rest.

    It is a Linear (``weight`` is ``W[:, keep]``) so that tracing names the main MatMul after the original module,
    and the export's layer inspection, zero check and sparse-kernel accounting treat it as that layer.
    """

    def __init__(self, linear: nn.Linear, outlier_channels: Sequence[int]):
        n_in = linear.in_features
        out_idx = torch.tensor(sorted({int(c) for c in outlier_channels}), dtype=torch.long)
        keep = torch.ones(n_in, dtype=torch.bool)
        keep[out_idx] = False
        keep_idx = keep.nonzero().flatten()
        super().__init__(len(keep_idx), linear.out_features, bias=linear.bias is not None,
                         device="meta", dtype=linear.weight.dtype)
        w = linear.weight.detach()
        self.weight = nn.Parameter(w[:, keep_idx].clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.outliers = nn.Linear(len(out_idx), linear.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.outliers.weight = nn.Parameter(w[:, out_idx].clone(), requires_grad=False)
        self.register_buffer("keep_index", keep_idx.to(w.device), persistent=False)
        self.register_buffer("outlier_index", out_idx.to(w.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.linear(x.index_select(-1, self.keep_index), self.weight, self.bias)
        return main + self.outliers(x.index_select(-1, self.outlier_index))


def input_absmax(model: nn.Module, modules: Sequence[str], windows: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| each of ``modules`` (Linears, by name) sees on ``windows``."""
    found = dict(model.named_modules())
    stats: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
            stats[name] = x if name not in stats else torch.maximum(stats[name], x)
        return record

    handles = [found[n].register_forward_pre_hook(hook(n)) for n in modules]
    try:
        with torch.inference_mode():
            for batch in tqdm(windows.split(batch_size), desc="outlier channels", unit="batch", leave=False):
                model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return stats


def splittable(linear: nn.Linear, k: int) -> bool:
    """Whether ``k`` outlier channels leave ``linear`` a main part of the kernel's 64-wide shapes that it runs on."""
    rest = linear.in_features - k
    return (k > 0 and k % KERNEL_TILE == 0 and rest > 0 and rest % KERNEL_TILE == 0 and linear.out_features % KERNEL_TILE == 0
            and not sparse_kernel_crashes(linear.out_features, rest))


def split_outlier_channels(model: nn.Module, stats: dict[str, torch.Tensor], k: int) -> dict[str, list[int]]:
    """Replace each Linear named in ``stats`` by an :class:`OutlierSplitLinear` over its ``k`` largest channels.

    Returns the outlier channels of each layer. Names may be PEFT's wrapped base layers (``....base_layer``): the
    adapter's own MatMuls keep the whole input and are untouched.
    """
    chosen = {}
    for name, absmax in stats.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        channels = torch.topk(absmax, k).indices.sort().values.tolist()
        setattr(parent, attr, OutlierSplitLinear(linear, channels))
        chosen[name] = channels
    return chosen
