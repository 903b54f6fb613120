"""Elastic LoRA rank on top of PEFT, in the style of NNCF BootstrapNAS's elasticity controllers.

The super-adapter is an ordinary PEFT LoRA adapter of rank ``r = max width``. A sub-adapter of rank ``k``
shares its weights: the first ``k`` rows of ``lora_A`` and the first ``k`` columns of ``lora_B``. The
scaling stays ``alpha / r`` for every ``k`` (as in Shears), so a sub-adapter is exactly the super-adapter
with the trailing rank components switched off.

Elasticity is applied by switching the class of each ``lora_A`` / ``lora_B`` ``nn.Linear`` to a subclass
whose forward reads only the active slice. Parameters, state-dict keys and shapes stay PEFT's, so PEFT saves
and loads the super-adapter unchanged; only the active slice receives gradient; PEFT's ``merge_and_unload``
merges the active sub-adapter (:class:`ElasticRankLora`), not the whole super-adapter.

The search space (:class:`SearchSpace`) is plain data saved next to the adapter as ``elastic_config.json``,
so later stages need nothing but the adapter folder.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.utils import CONFIG_NAME
from peft.utils.other import transpose
from torch import nn

from .adapters import DeltaLora
from .config import NLSConfig
from .errors import ShearsError
from .io import read_json, write_json
from .models import check_scopes, decoder_blocks

logger = logging.getLogger(__name__)

ELASTIC_DIM = "lora_rank"
ELASTIC_CONFIG_NAME = "elastic_config.json"

#: A sub-adapter configuration: group name -> active rank. Plain JSON.
SubnetConfig = dict[str, int]


# ----------------------------------------------------------------------------------------- search space


@dataclass
class ElasticGroup:
    """Modules that always share one rank (e.g. q, k, v of one block), and the ranks they may take."""

    name: str
    modules: list[str]
    ranks: list[int]  # largest first


@dataclass
class SearchSpace:
    """The ``lora_rank`` elastic dimension: groups, their ranks, and what is needed to cost a configuration."""

    groups: list[ElasticGroup]
    max_rank: int
    lora_alpha: float
    lora_dropout: float = 0.0
    fixed_modules: list[str] = field(default_factory=list)  # adapted at max_rank, not elastic
    module_shapes: dict[str, list[int]] = field(default_factory=dict)  # name -> [in_features, out_features]
    dimension: str = ELASTIC_DIM

    # -- configurations ------------------------------------------------------------------------------
    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def maximal(self) -> SubnetConfig:
        return {g.name: g.ranks[0] for g in self.groups}

    def minimal(self) -> SubnetConfig:
        return {g.name: g.ranks[-1] for g in self.groups}

    def heuristic(self) -> SubnetConfig:
        """Shears' mid-point heuristic: index (n - 1) // 2 of each group's list."""
        return {g.name: g.ranks[(len(g.ranks) - 1) // 2] for g in self.groups}

    def random(self, rng: random.Random) -> SubnetConfig:
        """Uniform choice per group, as NLS samples during training."""
        return {g.name: rng.choice(g.ranks) for g in self.groups}

    def validate(self, config: Mapping[str, int]) -> SubnetConfig:
        """Return ``config`` as a full mapping; unknown groups or ranks outside a group's list are errors."""
        by_name = {g.name: g for g in self.groups}
        unknown = [k for k in config if k not in by_name]
        if unknown:
            raise ShearsError(
                f"sub-adapter configuration names unknown group {unknown[0]!r}; groups look like "
                f"{self.groups[0].name!r}"
            )
        missing = [g.name for g in self.groups if g.name not in config]
        if missing:
            raise ShearsError(
                f"sub-adapter configuration has no rank for group {missing[0]!r} ({len(missing)} missing)"
            )
        for name, width in config.items():
            if width not in by_name[name].ranks:
                raise ShearsError(f"rank {width} of group {name!r} is not in its list {by_name[name].ranks}")
        return {g.name: int(config[g.name]) for g in self.groups}

    def module_ranks(self, config: Mapping[str, int]) -> dict[str, int]:
        ranks = {m: self.max_rank for m in self.fixed_modules}
        for g in self.groups:
            for m in g.modules:
                ranks[m] = int(config[g.name])
        return ranks

    def adapter_params(self, config: Mapping[str, int]) -> int:
        """Active adapter parameters; also the adapter's multiply-accumulates per token."""
        return sum(r * sum(self.module_shapes[m]) for m, r in self.module_ranks(config).items())

    macs_per_token = adapter_params

    def size(self) -> int:
        n = 1
        for g in self.groups:
            n *= len(g.ranks)
        return n

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        d = dict(d)
        # elastic_config.json written before 0.2 calls a group's ranks "widths"
        d["groups"] = [
            ElasticGroup(**{("ranks" if k == "widths" else k): v for k, v in g.items()}) for g in d["groups"]
        ]
        return cls(**d)

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / ELASTIC_CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> "SearchSpace":
        path = Path(folder) / ELASTIC_CONFIG_NAME
        if not path.is_file():
            raise ShearsError(
                f"{folder} has no {ELASTIC_CONFIG_NAME}; pass the super-adapter folder written by 'shears-nncf train'"
            )
        try:
            return cls.from_dict(read_json(path, "elastic config"))
        except (TypeError, KeyError) as e:
            raise ShearsError(
                f"{path} is not a valid elastic config ({e}); re-create it with 'shears-nncf train'"
            ) from None


# ------------------------------------------------------------------------------------ pattern matching

_NNCF_ATTR = re.compile(r"\[([^\]]+)\]")


def _pattern_to_regex(pattern: str) -> tuple[re.Pattern, bool]:
    """Compile a group pattern; the flag says it matches full module names only (else the full name or its last
    component).

    NNCF node names of the original Shears configs, e.g.
    ``{re}PeftModelForCausalLM/LoraModel[base_model]/LlamaForCausalLM[model]/.../LlamaDecoderLayer[{*}]/
    LlamaAttention[self_attn]/Linear[q_proj]/ModuleDict[lora_A]/NNCFLinear[default]/linear_0``, carry the module
    path in their ``[attr]`` parts: drop the PEFT wrappers and the ``lora_A`` tail and ``{*}`` becomes a block index.
    """
    if "/" in pattern and "[" in pattern:
        attrs = _NNCF_ATTR.findall(pattern.removeprefix("{re}"))
        if "lora_A" in attrs or "lora_B" in attrs:
            attrs = attrs[: min(attrs.index(x) for x in ("lora_A", "lora_B") if x in attrs)]
        if attrs[:1] == ["base_model"]:
            attrs = attrs[2:]  # LoraModel[base_model] / XForCausalLM[model]
        parts = [r"\d+" if a == "{*}" else re.escape(a) for a in attrs]
        return re.compile(r"\.".join(parts)), True
    try:
        return re.compile(pattern), False
    except re.error as e:
        raise ShearsError(
            f"group pattern {pattern!r} is not a valid regular expression ({e}); fix the config"
        ) from None


def build_search_space(model: nn.Module, nls: NLSConfig) -> SearchSpace:
    """Match the config's group patterns against the model: one group per pattern group per decoder block."""
    elasticity, lora = nls.elasticity, nls.lora
    prefix, blocks = decoder_blocks(model)
    compiled = [[(p, *_pattern_to_regex(p)) for p in g] for g in elasticity.groups]
    used: dict[str, int] = {}
    groups: list[ElasticGroup] = []
    shapes: dict[str, list[int]] = {}
    for i, block in enumerate(blocks):
        linears = {f"{prefix}.{i}.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear) and n}
        for gi, pats in enumerate(compiled):
            members = []
            for name in linears:
                short = name.rsplit(".", 1)[-1]
                for p, rx, full in pats:
                    if rx.fullmatch(name) or (not full and rx.fullmatch(short)):
                        used[p] = used.get(p, 0) + 1
                        members.append(name)
                        break
            if not members:
                continue
            for name in members:
                shapes[name] = [linears[name].in_features, linears[name].out_features]
            short = "+".join(n.rsplit(".", 1)[-1] for n in members)
            groups.append(ElasticGroup(name=f"{prefix}.{i}.{short}", modules=members, ranks=list(elasticity.ranks[gi])))
    for g in elasticity.groups:
        for p in g:
            if p not in used:
                example = next(
                    n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(f"{prefix}.0.")
                )
                raise ShearsError(
                    f"group pattern {p!r} matches no module of {type(model).__name__}; modules look like {example!r}"
                )
    owners: dict[str, str] = {}
    for g in groups:
        for m in g.modules:
            if m in owners:
                raise ShearsError(
                    f"module {m} is in two groups ({owners[m]} and {g.name}); each module may be in one group"
                )
            owners[m] = g.name
    max_rank = nls.max_rank  # NLSConfig has checked that every rank fits
    fixed: list[str] = []
    block_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix + ".")]
    check_scopes(block_linears, lora.target_modules, "lora.target_modules", type(model).__name__)
    if lora.target_modules:
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in lora.target_modules and name not in owners:
                if not name.startswith(prefix + "."):
                    continue
                fixed.append(name)
                shapes[name] = [m.in_features, m.out_features]
    return SearchSpace(
        groups=groups,
        max_rank=max_rank,
        lora_alpha=float(lora.lora_alpha),
        lora_dropout=float(lora.lora_dropout),
        fixed_modules=fixed,
        module_shapes=shapes,
    )


# ------------------------------------------------------------------------------------- elastic layers


class ElasticLoraA(nn.Linear):
    """``lora_A`` whose output is the first ``active_rank`` rank components."""

    active_rank: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At full rank skip the slice: its autograd node would copy the whole gradient once more.
        w = self.weight if self.active_rank == self.out_features else self.weight[: self.active_rank]
        return F.linear(x, w)


class ElasticLoraB(nn.Linear):
    """``lora_B`` that reads only the first ``active_rank`` rank components."""

    active_rank: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.active_rank == self.in_features else self.weight[:, : self.active_rank]
        return F.linear(x, w, self.bias)


def active_delta(module: LoraLayer, adapter: str) -> torch.Tensor:
    """``s · B_r · A_r`` for the adapter's active rank r (the whole rank when the layer is not elastic)."""
    lora_a, lora_b = module.lora_A[adapter], module.lora_B[adapter]
    r = getattr(lora_a, "active_rank", lora_a.out_features)
    return transpose(lora_b.weight[:, :r] @ lora_a.weight[:r], module.fan_in_fan_out) * module.scaling[adapter]


class ElasticRankLora(DeltaLora):
    """PEFT's merge of an elastic layer: the *active* sub-adapter, not the whole super-adapter.

    PEFT's own ``merge_and_unload`` reads the full ``lora_A`` / ``lora_B`` weights and would silently merge the
    maximal adapter whatever rank is active; through this variant (the seam DoRA uses) it merges what the
    model computes. The forward stays plain LoRA: the sliced ``lora_A`` / ``lora_B`` read the active rank.
    """

    delta = staticmethod(active_delta)

    def forward(
        self, module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs
    ) -> torch.Tensor:
        lora_a, lora_b = module.lora_A[active_adapter], module.lora_B[active_adapter]
        return result + lora_b(lora_a(module.lora_dropout[active_adapter](x))) * module.scaling[active_adapter]


class ElasticityController:
    """Controller over a PEFT model's elastic LoRA layers: activates sub-adapter configurations.

    Named after and shaped like BootstrapNAS's ``ElasticityController`` (activate supernet / minimal / random /
    given subnet).
    The active configuration stays fixed until the next ``activate*`` call, so a gradient-checkpointing
    recompute always sees the configuration its forward pass saw.
    """

    def __init__(self, peft_model: nn.Module, space: SearchSpace, adapter_name: str = "default"):
        self.model = peft_model
        self.space = space
        self.adapter_name = adapter_name
        base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        self._pairs: dict[str, tuple[nn.Linear, nn.Linear]] = {}
        self._layers: list[LoraLayer] = []
        for group in space.groups:
            for name in group.modules:
                layer = base.get_submodule(name)
                if not hasattr(layer, "lora_A") or adapter_name not in layer.lora_A:
                    raise ShearsError(
                        f"module {name} has no LoRA adapter {adapter_name!r}; the adapter does not match the model"
                    )
                a, b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
                if a.out_features != space.max_rank:
                    raise ShearsError(
                        f"LoRA rank of {name} is {a.out_features}, the search space expects {space.max_rank}"
                    )
                a.__class__, b.__class__ = ElasticLoraA, ElasticLoraB
                layer.lora_variant.setdefault(adapter_name, ElasticRankLora())  # a masked (SQFT) variant slices itself
                self._pairs[name] = (a, b)
                self._layers.append(layer)
        self._active: SubnetConfig = {}
        self.activate(space.maximal())

    def activate(self, config: Mapping[str, int]) -> SubnetConfig:
        config = self.space.validate(config)
        if any(layer.merged for layer in self._layers):  # unmerging would then subtract another sub-adapter
            raise ShearsError(
                "a sub-adapter is merged into the weights; call unmerge_adapter() before activating another"
            )
        for group in self.space.groups:
            for name in group.modules:
                a, b = self._pairs[name]
                a.active_rank = b.active_rank = config[group.name]
        self._active = config
        return config

    def activate_maximal(self) -> SubnetConfig:
        return self.activate(self.space.maximal())

    def activate_minimal(self) -> SubnetConfig:
        return self.activate(self.space.minimal())

    def activate_heuristic(self) -> SubnetConfig:
        return self.activate(self.space.heuristic())

    def activate_random(self, rng: random.Random) -> SubnetConfig:
        return self.activate(self.space.random(rng))

    @property
    def active_config(self) -> SubnetConfig:
        return dict(self._active)

    def active_params(self) -> int:
        return self.space.adapter_params(self._active)


# --------------------------------------------------------------------------------- building / loading


def check_sub_adapter(adapter_dir: str | Path) -> None:
    """A deployable adapter is one sub-adapter: a super-adapter would be exported (or applied) at its maximal rank."""
    if (Path(adapter_dir) / ELASTIC_CONFIG_NAME).is_file():
        raise ShearsError(
            f"{adapter_dir} is a super-adapter; pick a sub-adapter with 'shears-nncf search' first "
            "(--strategy maximal keeps the largest ranks)"
        )


def add_elastic_lora(model: nn.Module, nls: NLSConfig, adapter_name: str = "default"):
    """Wrap a (sparse) HF model with a rank-``max width`` PEFT LoRA and make its rank elastic.

    Returns ``(peft_model, controller)``. Only LoRA parameters are trainable; base weights stay frozen.
    """
    from peft import LoraConfig, get_peft_model

    space = build_search_space(model, nls)
    targets = [m for g in space.groups for m in g.modules] + list(space.fixed_modules)
    lora_config = LoraConfig(
        r=space.max_rank,
        lora_alpha=space.lora_alpha,
        lora_dropout=space.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config, adapter_name=adapter_name)
    name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if nls.base_model_id or name:  # what stock loaders read: a hub id or an absolute path, from any folder
        from .models import base_model_id

        peft_model.peft_config[adapter_name].base_model_name_or_path = base_model_id(name, nls.base_model_id)
    return peft_model, ElasticityController(peft_model, space, adapter_name)


def load_elastic_lora(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False):
    """Load a super-adapter folder (PEFT files + ``elastic_config.json``) onto ``model``."""
    space = SearchSpace.load(adapter_dir)
    if not (Path(adapter_dir) / CONFIG_NAME).is_file():
        raise ShearsError(f"{adapter_dir} has no {CONFIG_NAME}; pass a PEFT adapter folder")
    missing = [m for g in space.groups for m in g.modules if not _has_module(model, m)]
    if missing:
        raise ShearsError(
            f"the adapter in {adapter_dir} targets {missing[0]}, which this model does not have; use "
            "the model it was trained on"
        )
    from .adapters import load_adapter

    peft_model = load_adapter(model, adapter_dir, is_trainable=is_trainable)  # re-attaches a sparsity-masked update
    return peft_model, ElasticityController(peft_model, space)


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def save_super_adapter(peft_model: nn.Module, space: SearchSpace, out_dir: str | Path) -> None:
    """PEFT's own files (``adapter_config.json``, ``adapter_model.safetensors``) plus ``elastic_config.json``."""
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    space.save(out_dir)
