"""LoRA whose update is masked by the frozen sparsity pattern, so that it merges into the sparse weights.

A plain LoRA update ``B·A`` is dense: merging it fills every zero stage 1 made, which is why Shears exports its
adapters unmerged and pays for two extra MatMuls per adapted layer at every token. SQFT (Muñoz et al., EMNLP
2024 Findings, "SparsePEFT") trains the update masked instead, ``ΔW = (B·A) ⊙ M`` with ``M = (W ≠ 0)``, in the
forward pass and in the merge, so that ``W + s·ΔW`` has exactly the zeros of ``W``: the deployed model is one
plain sparse model that any loader runs, with the sparse kernel on every pruned layer and no adapter cost.

This is a PEFT :class:`~peft.tuners.lora.layer.LoraVariant` (the seam DoRA uses): it is attached to the LoRA
layers of a stock PEFT model, works with the elastic rank (a rank-r sub-adapter is the first r rows of A /
columns of B, whatever the active rank is) and makes PEFT's own ``merge_and_unload`` merge the masked update of
the *active* rank. Whether an adapter folder was trained masked is recorded in :data:`MARKER_NAME` beside
PEFT's files; every stage that loads an adapter reads it through :func:`load_adapter`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from torch import nn

from .errors import ShearsError
from .io import read_json, write_json

logger = logging.getLogger(__name__)

MARKER_NAME = "sparse_adapter.json"


def masked_delta(module: LoraLayer, adapter: str) -> torch.Tensor:
    """``s · (B_r · A_r) ⊙ (W ≠ 0)`` for the adapter's active rank r, in the LoRA weights' dtype."""
    lora_a, lora_b = module.lora_A[adapter], module.lora_B[adapter]
    r = getattr(lora_a, "active_rank", lora_a.out_features)
    weight = module.get_base_layer().weight
    return (lora_b.weight[:, :r] @ lora_a.weight[:r]) * (weight != 0).to(lora_a.weight.dtype) * module.scaling[adapter]


class DeltaLora(LoraVariant):
    """A LoRA variant whose update is ``delta(module, adapter)``: merging, unmerging and the forward follow from it."""

    @staticmethod
    def delta(module: LoraLayer, adapter: str) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        pass

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        x = module.lora_dropout[active_adapter](x.to(module.lora_A[active_adapter].weight.dtype))
        return result + F.linear(x, self.delta(module, active_adapter)).to(result.dtype)

    def merge_safe(self, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + self.delta(module, active_adapter).to(orig_weight.dtype)

    def merge_unsafe(self, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += self.delta(module, active_adapter).to(orig_weight.dtype)

    def unmerge(self, module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - self.delta(module, active_adapter).to(orig_weight.dtype)


class SparseMaskedLora(DeltaLora):
    """Forward and merge with the update masked by the base weight's zeros (stateless: PEFT keeps one per layer)."""

    delta = staticmethod(masked_delta)

    def supports_lora_conversion(self) -> bool:
        return False


def lora_layers(model: nn.Module, adapter: str = "default") -> dict[str, LoraLayer]:
    """Every PEFT LoRA Linear of ``model`` that carries ``adapter``, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in getattr(m, "lora_A", {})}


def mask_lora(model: nn.Module, adapter: str = "default") -> int:
    """Make every LoRA layer of ``adapter`` sparsity-masked; returns how many layers."""
    layers = lora_layers(model, adapter)
    for layer in layers.values():
        layer.lora_variant[adapter] = SparseMaskedLora()
    return len(layers)


def is_masked(adapter_dir: str | os.PathLike) -> bool:
    """Whether the adapter folder was trained with the sparsity-masked update."""
    path = Path(adapter_dir) / MARKER_NAME
    return path.is_file() and bool(read_json(path, "sparse adapter marker").get("masked_update"))


def _weights_digest(adapter_dir: str | os.PathLike) -> Optional[str]:
    import hashlib

    from peft.utils import SAFETENSORS_WEIGHTS_NAME

    weights = Path(adapter_dir) / SAFETENSORS_WEIGHTS_NAME
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mark_masked(adapter_dir: str | os.PathLike) -> None:
    """Record that the adapter was trained masked, bound to its weights file (once it exists) by its SHA-256."""
    write_json(
        Path(adapter_dir) / MARKER_NAME,
        {
            "masked_update": True,
            "rule": "delta_W = scaling * (B @ A) * (W != 0): merge with 'shears-nncf merge' or 'export --merge', "
            "or load with shears_nncf.adapters.load_adapter; stock PEFT would apply it unmasked",
            "weights_sha256": _weights_digest(adapter_dir),
        },
    )


def check_masked(adapter_dir: str | os.PathLike) -> None:
    """Refuse to merge an adapter unless its marker was written for its very weights by training or search.

    A marker written by hand, or copied from another adapter, would let a plain update fill the pruned zeros.
    """
    if not is_masked(adapter_dir):
        raise ShearsError(
            f"{adapter_dir} was not trained sparsity-masked ({MARKER_NAME} missing): merging it would "
            "fill the pruned zeros; export it unmerged, or train with sparse_adapter: true"
        )
    recorded = read_json(Path(adapter_dir) / MARKER_NAME, "sparse adapter marker").get("weights_sha256")
    if not recorded or recorded != _weights_digest(adapter_dir):
        raise ShearsError(
            f"{adapter_dir}/{MARKER_NAME} was not written for this adapter's weights (by hand, or "
            "copied from another adapter): merging a plain update would fill the pruned zeros; export it "
            "unmerged, or train it with --sparse-adapter"
        )


def check_adapter_folder(adapter_dir: str | os.PathLike) -> tuple[dict, Path]:
    """A PEFT LoRA folder with safetensors weights (pickle adapter files are never read: they can run code).

    Returns its ``adapter_config.json`` and the weights file.
    """
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

    folder = Path(adapter_dir)
    if not (folder / CONFIG_NAME).is_file():
        raise ShearsError(
            f"{folder} has no {CONFIG_NAME}; pass a PEFT adapter folder (e.g. the output of 'shears-nncf search')"
        )
    weights = folder / SAFETENSORS_WEIGHTS_NAME
    if not weights.is_file():
        raise ShearsError(
            f"adapter folder {folder} has no {SAFETENSORS_WEIGHTS_NAME} (pickle adapter files are not read: "
            "they can run code); save the adapter with safe_serialization=True"
        )
    cfg = read_json(folder / CONFIG_NAME, "adapter config")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ShearsError(f"adapter {folder} is a {cfg.get('peft_type')} adapter; only LoRA adapters are supported")
    return cfg, weights


def _lora_shapes(weights: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{module name: {"A": shape, "B": shape}}`` read from the safetensors header only."""
    from safetensors import safe_open

    out: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                for part in ("lora_A", "lora_B"):
                    marker = f".{part}."
                    if marker in key:
                        module = key.split(marker)[0].removeprefix("base_model.model.")
                        out.setdefault(module, {})[part[-1]] = tuple(f.get_slice(key).get_shape())
    except Exception as e:  # safetensors raises its own SafetensorError for a truncated or foreign file
        raise ShearsError(
            f"adapter weights {weights} cannot be read as safetensors ({e}); save the adapter again"
        ) from None
    return out


def check_adapter_matches(model: nn.Module, adapter: str | os.PathLike) -> dict[str, int]:
    """Check every LoRA pair against the model's Linear of the same name; return the rank of each.

    PEFT would fail later with a size-mismatch traceback; this says which model the adapter belongs to instead.
    """
    cfg, weights = check_adapter_folder(adapter)
    shapes = _lora_shapes(weights)
    if not shapes:
        raise ShearsError(f"adapter {adapter} holds no lora_A / lora_B weights; pass a LoRA adapter folder")
    modules = dict(model.named_modules())
    targets = cfg.get("target_modules")
    if isinstance(targets, list):  # PEFT matches a name or a dotted suffix of one (a string is a regex, left to PEFT)
        for t in targets:
            if not any(n == t or n.endswith("." + t) for n in modules):
                raise ShearsError(
                    f"adapter {adapter} config lists target_modules entry {t!r}, which {type(model).__name__} "
                    "does not have; fix adapter_config.json or pass the model the adapter was trained on"
                )
    ranks = {}
    for name, ab in sorted(shapes.items()):
        if set(ab) != {"A", "B"}:
            raise ShearsError(
                f"adapter {adapter} has lora_{'A' if 'A' not in ab else 'B'} missing for {name}; the "
                "adapter file is incomplete"
            )
        target = modules.get(name)
        if not isinstance(target, nn.Linear):
            raise ShearsError(
                f"adapter {adapter} adapts {name}, which {type(model).__name__} does not have as a Linear "
                f"(base model of the adapter: {cfg.get('base_model_name_or_path')!r}); pass the model "
                "the adapter was trained on"
            )
        (r, fan_in), (fan_out, r_b) = ab["A"], ab["B"]
        if fan_in != target.in_features or fan_out != target.out_features or r != r_b:
            raise ShearsError(
                f"adapter {adapter} was trained for a different model: {name} is "
                f"{target.in_features}->{target.out_features} "
                f"here but {fan_in}->{fan_out} in the adapter; pass the sparse model the adapter was trained on"
            )
        ranks[name] = r
    return ranks


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, is_trainable: bool = False):
    """``PeftModel.from_pretrained`` with the masked update re-attached when the folder says it was trained so."""
    from peft import PeftModel

    check_adapter_matches(model, adapter_dir)  # PEFT would fail with a size-mismatch traceback
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=is_trainable)
    if is_masked(adapter_dir):
        logger.info("%s: sparsity-masked adapter on %d layers", adapter_dir, mask_lora(peft_model))
    return peft_model


def merge_masked(peft_model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """Merge the masked adapter into the base weights; returns the plain model and the zeros kept per layer.

    Raises if any zero of an adapted layer is lost: the merged model must have exactly the stage-1 zeros.
    """
    layers = lora_layers(peft_model.get_base_model())  # names as in the merged model
    if not layers or not all(isinstance(m.lora_variant.get("default"), SparseMaskedLora) for m in layers.values()):
        raise ShearsError(
            "this adapter was not trained sparsity-masked: merging B·A would fill the pruned zeros; "
            "export it unmerged, or train with sparse_adapter: true"
        )
    zeros = {n: m.get_base_layer().weight == 0 for n, m in layers.items()}
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    kept = {}
    for name, mask in zeros.items():
        weight = merged.get_submodule(name).weight
        lost = int((weight[mask] != 0).sum())
        if lost:
            raise RuntimeError(f"{lost} pruned weights of {name} became non-zero in the merge")
        kept[name] = int(mask.sum())
    return merged, kept
