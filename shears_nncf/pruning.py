"""Stage 1: Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Wanda scores each weight by ``|W_ij| * ||X_j||_2`` - its magnitude times the norm of the input feature it
multiplies, over all calibration tokens - and zeros the lowest scores of every output row. Blocks are pruned
in order: the statistics of block i come from the dense block i, and the pruned block i produces the inputs
of block i+1, so each block is pruned on the activations it will see. Only one block is on the compute device
at a time, and activations are kept for one block, so peak memory is the weights plus one block's activations.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .block_inputs import InputStatistics, catch_block_inputs
from .calibration import calibration_windows, default_calibration_source, describe_source
from .cards import write_sparse_card
from .config import PruningConfig
from .errors import ShearsError
from .io import atomic_output_dir, write_json
from .masks import outlier_ratio, owl_sparsities, sparsegpt_prune_, wanda_score, zero_lowest_
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
from .reports import REPORT_FILES, SparsityReport

logger = logging.getLogger(__name__)

REPORT_NAME = REPORT_FILES["prune"]

#: A ``[n, seqlen]`` LongTensor of windows, an ``nncf.Dataset``, or an iterable of input_ids tensors / input dicts.
Calibration = Union[torch.Tensor, Iterable[Any]]


# --------------------------------------------------------------------------------------------------- driver


def _prune_blocks(
    model: nn.Module,
    targets: list[dict[str, nn.Linear]],
    batches: list[dict],
    config: PruningConfig,
    sparsities: Optional[list[float]] = None,
) -> list[float]:
    """Visit the blocks in order; block i's statistics come from the dense block i on the pruned block i-1's outputs.

    ``sparsities`` (one per block) prune; ``None`` only measures OWL's outlier ratio of every block, on the dense
    model (nothing is pruned), and returns them.
    """
    device = resolve_device(config.device)
    home = next(model.parameters()).device
    prefix, blocks = decoder_blocks(model)
    hidden, calls = catch_block_inputs(model, prefix, blocks, batches, device)
    hessian = config.method == "sparsegpt" and sparsities is not None
    ratios = []
    desc = f"{config.method} {config.pattern}" if sparsities is not None else "OWL outlier statistics"
    for i, block in enumerate(tqdm(blocks, desc=desc, unit="block")):
        block.to(device)
        block_calls = [per_batch[i] for per_batch in calls]
        with torch.inference_mode():
            if targets[i]:
                stats = InputStatistics(targets[i], hessian=hessian).run(block, hidden, block_calls)  # dense block i
                if sparsities is None:
                    ratios.append(
                        outlier_ratio([wanda_score(m, stats[n]) for n, m in targets[i].items()], config.owl_threshold)
                    )
                for name, linear in targets[i].items() if sparsities is not None else ():
                    if hessian:
                        sparsegpt_prune_(
                            linear.weight,
                            stats[name],
                            sparsities[i],
                            config.nm,
                            config.sparsegpt_blocksize,
                            config.sparsegpt_damp,
                        )
                    else:
                        zero_lowest_(
                            linear.weight,
                            wanda_score(linear, stats[name]),
                            sparsities[i],
                            config.nm,
                            use_variant=config.use_variant,
                        )
            if i + 1 < len(blocks):
                for b, call in enumerate(block_calls):
                    hidden[b] = call(block, hidden[b])  # the (pruned) block i feeds block i+1
        block.to(home)
    return ratios


def _magnitude(targets: list[dict[str, nn.Linear]], config: PruningConfig) -> None:
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
            batch = {
                k: torch.as_tensor(v) if not torch.is_tensor(v) and hasattr(v, "__array__") else v
                for k, v in item.items()
            }
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
                    f"{name} has {linear.in_features} inputs, not a multiple of {nm[1]}, so the "
                    f"{nm[0]}:{nm[1]} pattern "
                    "cannot be applied; add it to ignored_scopes or use the unstructured pattern"
                )


def sparsify(
    model: nn.Module, calibration: Optional[Calibration] = None, config: Optional[PruningConfig] = None
) -> SparsityReport:
    """Prune a decoder-only causal LM in place and report the zeros; ``calibration`` is unused by magnitude.

    ``calibration`` is a ``[n, seqlen]`` LongTensor of token windows (run ``config.batch_size`` at a time), an
    ``nncf.Dataset`` or any iterable of ``input_ids`` tensors or model-input dicts (one model call each).
    Embeddings and ``lm_head`` are never touched: only ``nn.Linear`` modules inside the decoder blocks,
    filtered by ``config.target_modules`` / ``config.ignored_scopes``.
    """
    config = config or PruningConfig()
    start = time.perf_counter()
    profile: dict = {"profile": "uniform"}
    prunable_linears(model, config.target_modules, config.ignored_scopes)  # a clear error when nothing matches
    prefix, blocks = decoder_blocks(model)
    targets = [
        block_linears(b, config.target_modules, config.ignored_scopes, prefix=f"{prefix}.{i}")
        for i, b in enumerate(blocks)
    ]
    _check_nm(targets, config.nm)
    was_training = model.training
    model.eval()
    try:
        if config.method == "magnitude":
            _magnitude(targets, config)
        else:
            if calibration is None:
                raise ShearsError(
                    f"{config.method} needs calibration data; pass token windows (see calibration.calibration_windows)"
                )
            batches = _as_batches(calibration, config.batch_size)
            if config.sparsity_profile == "owl":
                outliers = _prune_blocks(model, targets, batches, config)
                sparsities = owl_sparsities(outliers, config.sparsity_level, config.owl_lambda)
                profile = {
                    "profile": "owl",
                    "threshold": config.owl_threshold,
                    "lambda": config.owl_lambda,
                    "outlier_ratio": outliers,
                }
            else:
                sparsities = [config.sparsity_level] * len(blocks)
            _prune_blocks(model, targets, batches, config, sparsities)
    finally:
        model.train(was_training)
    modules = {
        name: m.weight.numel() - torch.count_nonzero(m.weight).item()
        for linears in targets
        for name, m in linears.items()
    }
    sizes = {name: m.weight.numel() for linears in targets for name, m in linears.items()}
    zeros, params = sum(modules.values()), sum(sizes.values())
    report = SparsityReport(
        method=config.method,
        pattern=config.pattern,
        sparsity_level=config.sparsity_level,
        use_variant=config.use_variant,
        sparsity=zeros / params if params else 0.0,
        zeros=zeros,
        params=params,
        calibration=None,
        layer_sparsity=profile
        | {"block_sparsity": [sum(modules[n] for n in t) / max(1, sum(sizes[n] for n in t)) for t in targets]},
        seconds=round(time.perf_counter() - start, 3),
        modules={name: z / sizes[name] for name, z in modules.items()},
    )
    logger.info(
        "%s %s: %.2f%% zeros over %d projections in %.1f s",
        config.method,
        config.pattern,
        100 * report["sparsity"],
        len(modules),
        report["seconds"],
    )
    return report


def format_report(report: SparsityReport) -> str:
    """One line for the command line: method, pattern, zeros, time."""
    return (
        f"{report['method']} {report['pattern']}: {100 * report['sparsity']:.2f}% zeros in {len(report['modules'])} "
        f"projections, {report['seconds']:.1f} s"
    )


def prune(
    model: Union[str, os.PathLike],
    output: Union[str, os.PathLike],
    config: Optional[PruningConfig] = None,
    *,
    trust_remote_code: bool = False,
) -> SparsityReport:
    """Load a model, sparsify it, and save a Hugging Face folder (tokenizer included) plus ``sparsity_report.json``.

    The zeros are plain zeros in the saved safetensors weights; a failure leaves no output folder behind.
    """
    config = config or PruningConfig()
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
        windows = (
            calibration_windows(tokenizer, source, config.nsamples, config.seqlen, config.seed) if source else None
        )
        lm = load_model(path, trust_remote_code=trust_remote_code)
        report = sparsify(lm, windows, config)
        if source is not None:
            report["calibration"] = {
                "source": describe_source(source),
                "nsamples": config.nsamples,
                "seqlen": config.seqlen,
                "seed": config.seed,
            }
        report = SparsityReport(model=os.fspath(model), **report)
        save_model(lm, tokenizer, tmp)
        write_json(tmp / REPORT_NAME, report)
        write_sparse_card(tmp, model, report)
    logger.info("Sparse model saved to %s", output)
    return report
