"""Which weights to zero, given a layer's scores or Hessian: the rules of Wanda, SparseGPT and OWL.

Each is a small function on tensors, so that tests can check it against an independent computation:
Wanda's ``|W| * ||X||`` compared within each output row (``zero_lowest_``, ``pruning_mask``), SparseGPT's
OBS update of the remaining weights (``sparsegpt_prune_``), OWL's per-block ratios from outlier statistics
(``owl_sparsities``). :mod:`shears_nncf.pruning` applies them block by block.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import ShearsError


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
    score: torch.Tensor,
    sparsity: float,
    nm: Optional[tuple[int, int]] = None,
    per_row: bool = True,
    use_variant: bool = False,
) -> torch.Tensor:
    """Which entries :func:`zero_lowest_` zeros for these scores (True = pruned)."""
    return zero_lowest_(torch.ones_like(score), score, sparsity, nm, per_row, use_variant) == 0


# --------------------------------------------------------------------------------------------- SparseGPT


def sparsegpt_prune_(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: Optional[tuple[int, int]] = None,
    blocksize: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023) on one ``[out, in]`` weight, in place: prune and update the rest (OBS).

    Columns are visited left to right. Within each block of ``blocksize`` columns the weights with the lowest
    ``w^2 / [H^-1]_jj^2`` (over the block, or the N lowest of every M inputs of a row) are pruned; each visited column's
    error ``(w - q) / [H^-1]_jj`` is spread over the columns still to come along row j of the upper Cholesky factor of
    ``H^-1``, which is the OBS update with the inverse Hessian of the remaining columns. ``H`` is ``X^T X`` dampened
    by ``damp`` times its mean diagonal; inputs that never fired are pruned.
    """
    if nm is not None and blocksize % nm[1]:
        raise ShearsError(
            f"sparsegpt_blocksize {blocksize} is not a multiple of M={nm[1]} of the {nm[0]}:{nm[1]} pattern; "
            "use e.g. 128"
        )
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


def outlier_ratio(metrics: list[torch.Tensor], threshold: float) -> float:
    """The share of a block's Wanda scores above ``threshold`` times their mean (OWL's layer outlier distribution)."""
    flat = torch.cat([m.flatten() for m in metrics])
    return float((flat > threshold * flat.mean()).float().mean())


def wanda_score(linear: nn.Linear, sq_norm: torch.Tensor) -> torch.Tensor:
    return linear.weight.abs().float().mul_(sq_norm.sqrt())  # |W_ij| * ||X_j||_2
