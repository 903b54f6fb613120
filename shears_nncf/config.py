"""NNCF-style JSON configs: validated with a JSON schema at the boundary, then held in typed dataclasses.

A config has one section per pipeline stage. Every section is optional so that a stage's CLI can take a
config that only describes that stage; the three original Shears configs (``bootstrapNAS`` with
``width.overwrite_groups``) load unchanged.

.. code-block:: json

    {
      "model": "smollm2-135m",
      "compression": [{"algorithm": "wanda", "sparsity_level": 0.5}],
      "bootstrapNAS": {"training": {"algorithm": "nls",
                        "lora": {"lora_alpha": 64, "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]},
                        "elasticity": {"available_elasticity_dims": ["lora_rank"],
                                       "lora_rank": {"groups": [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]],
                                                     "widths": [32, 24, 16]}}},
                       "search": {"strategy": "heuristic", "eval": "loss"}},
      "training": {"data": ["../shared/data/gsm8k/train.jsonl"], "learning_rate": 3e-4, "batch_size": 16},
      "export": {"quantize": "w8a8"},
      "eval": {"tasks": ["gsm8k"], "limit": 100}
    }
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import jsonschema

from .errors import ShearsError
from .io import read_json

PATTERNS = ("unstructured", "2:4", "4:8")
PRUNE_METHODS = ("wanda", "sparsegpt", "magnitude")
#: uniform: every pruned layer at sparsity_level; owl: per-block ratios from outlier statistics (Yin et al. 2024)
SPARSITY_PROFILES = ("uniform", "owl")
SEARCH_STRATEGIES = ("heuristic", "maximal", "minimal", "hill-climbing", "nsga2")
QUANTIZE_MODES = ("w8a8", "int8-weights", "int4-weights", "none")
OVERFLOW_FIX = ("enable", "first_layer_only", "disable")
#: OpenVINO inference precision of the IR's float ops; 'default' = OpenVINO's choice (bf16 on AMX CPUs, f32 elsewhere).
INFERENCE_PRECISIONS = ("f32", "bf16", "default")
#: in-ir: the adapter's MatMuls inside the IR; runtime: a base IR + adapter files OpenVINO GenAI applies at run time.
ADAPTER_MODES = ("in-ir", "runtime")
#: genai: OpenVINO GenAI's LLMPipeline (the runtime users deploy); infer: the IR's own infer request, step by step.
RUNTIMES = ("genai", "infer")
#: generate: LLM-Adapters' generation + answer extraction; likelihood: each choice's log-likelihood (lm-eval's acc).
SCORINGS = ("generate", "likelihood")
SAMPLINGS = ("uniform", "sandwich")
SAMPLE_EVERY = ("micro_batch", "step")
STAGES = ("prune", "train", "search", "export", "bench", "eval")

_STR_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}}
_POS_INT = {"type": "integer", "minimum": 1}

_WANDA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["algorithm"],
    "properties": {
        "algorithm": {"enum": list(PRUNE_METHODS)},
        "sparsity_level": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "sparsity_profile": {"enum": list(SPARSITY_PROFILES)},
        "owl_threshold": {"type": "number", "exclusiveMinimum": 0},
        "owl_lambda": {"type": "number", "minimum": 0, "exclusiveMaximum": 0.5},
        "sparsegpt_blocksize": _POS_INT,
        "sparsegpt_damp": {"type": "number", "exclusiveMinimum": 0},
        "pattern": {"enum": list(PATTERNS)},
        "use_variant": {"type": "boolean"},
        "calibration": {"type": ["string", "null"]},
        "nsamples": _POS_INT,
        "seqlen": _POS_INT,
        "seed": {"type": "integer"},
        "batch_size": _POS_INT,
        "target_modules": {"type": ["array", "null"], "items": {"type": "string"}},
        "ignored_scopes": _STR_LIST,
        "device": {"type": "string"},
    },
}

_WIDTHS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}}

_ELASTICITY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "available_elasticity_dims": {"type": "array", "items": {"enum": ["lora_rank", "width"]}},
        # The format of this package: short module names (or regexes) per group, one list of widths
        # for all groups or one per group.
        "lora_rank": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups", "widths"],
            "properties": {
                "groups": {"type": "array", "minItems": 1, "items": {**_STR_LIST, "minItems": 1}},
                "widths": {"oneOf": [_WIDTHS, {"type": "array", "minItems": 1, "items": _WIDTHS}]},
            },
        },
        # The original Shears / BootstrapNAS format: NNCF node-name patterns.
        "width": {
            "type": "object",
            "additionalProperties": False,
            "required": ["overwrite_groups", "overwrite_groups_widths"],
            "properties": {
                "overwrite_groups": {"type": "array", "minItems": 1, "items": {**_STR_LIST, "minItems": 1}},
                "overwrite_groups_widths": {"type": "array", "minItems": 1, "items": _WIDTHS},
                "min_width": _POS_INT,
                "max_num_widths": _POS_INT,
                "width_step": _POS_INT,
            },
        },
    },
}

_NAS_TRAINING_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "algorithm": {"enum": ["nls", "progressive_shrinking"]},
        "sampling": {"enum": ["uniform", "sandwich"]},
        "sample_every": {"enum": ["micro_batch", "step"]},
        "sparse_adapter": {"type": "boolean"},
        "lora": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "r": _POS_INT,
                "lora_alpha": {"type": "number", "exclusiveMinimum": 0},
                "lora_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "target_modules": _STR_LIST,
            },
        },
        "elasticity": _ELASTICITY_SCHEMA,
        # Accepted for compatibility with BootstrapNAS configs; they have no effect on LoRA-rank NLS.
        "frozen_layers_allowed": {"type": "boolean"},
        "progressivity_of_elasticity": _STR_LIST,
        "batchnorm_adaptation": {"type": "object"},
        "schedule": {"type": "object"},
        "lr_schedule": {"type": "object"},
    },
}

_SEARCH_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "strategy": {"enum": list(SEARCH_STRATEGIES)},
        "eval": {"type": "string", "minLength": 1},
        "budget": _POS_INT,
        "patience": _POS_INT,
        "limit": _POS_INT,
        "population": {"type": "integer", "minimum": 2},
        "neighbours": _POS_INT,
        "references": {"type": "boolean"},
        "batch_size": _POS_INT,
        "cutoff_len": _POS_INT,
        "seed": {"type": "integer"},
        "device": {"type": "string", "minLength": 1},
        # accepted from BootstrapNAS search configs
        "algorithm": {"type": "string"},
        "num_evals": _POS_INT,
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "output": {"type": "string", "minLength": 1},
        "input_info": {
            "oneOf": [
                {"type": "object"},
                {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                            "properties": {"sample_size": {"type": "array", "items": {"type": "integer"}},
                                                           "type": {"type": "string"},
                                                           "keyword": {"type": "string"},
                                                           "filler": {"type": "string"}}}},
            ]
        },
        "compression": {"oneOf": [_WANDA_SCHEMA, {"type": "array", "maxItems": 1, "items": _WANDA_SCHEMA}]},
        "bootstrapNAS": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"training": _NAS_TRAINING_SCHEMA, "search": _SEARCH_SCHEMA},
        },
        "training": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "data": {"oneOf": [{"type": "string"}, _STR_LIST]},
                "learning_rate": {"type": "number", "exclusiveMinimum": 0},
                "batch_size": _POS_INT,
                "micro_batch_size": _POS_INT,
                "grad_accum": _POS_INT,
                "epochs": {"type": "number", "exclusiveMinimum": 0},
                "max_steps": {"type": "integer"},
                "warmup_steps": {"type": "integer", "minimum": 0},
                "warmup_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                "lr_scheduler_type": {"type": "string"},
                "weight_decay": {"type": "number", "minimum": 0},
                "cutoff_len": _POS_INT,
                "train_on_inputs": {"type": "boolean"},
                "val_set_size": {"type": "number", "minimum": 0},
                "max_train_samples": _POS_INT,
                "gradient_checkpointing": {"type": "boolean"},
                "logging_steps": _POS_INT,
                "save_steps": _POS_INT,
                "save_total_limit": _POS_INT,
                "seed": {"type": "integer"},
                "bf16": {"type": "boolean"},
            },
        },
        "export": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "quantize": {"enum": list(QUANTIZE_MODES)},
                "sparse_rate": {"oneOf": [{"const": "auto"}, {"type": "number", "minimum": 0, "maximum": 1}]},
                "ignored_scopes": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}},
                "overflow_fix": {"enum": list(OVERFLOW_FIX)},
                "merge": {"type": "boolean"},
                "adapter_mode": {"enum": list(ADAPTER_MODES)},
                "inference_precision": {"enum": list(INFERENCE_PRECISIONS)},
                "calibration": {"type": ["string", "null"]},
                "nsamples": _POS_INT,
                "seqlen": _POS_INT,
                "seed": {"type": "integer"},
            },
        },
        "bench": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "prompt_len": _POS_INT,
                "new_tokens": _POS_INT,
                "threads": _POS_INT,
                "repeats": _POS_INT,
                "precision": {"enum": list(INFERENCE_PRECISIONS)},
                "runtime": {"enum": list(RUNTIMES)},
                "adapter": {"type": ["string", "null"]},
            },
        },
        "eval": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tasks": _STR_LIST,
                "limit": _POS_INT,
                "batch_size": _POS_INT,
                "max_new_tokens": _POS_INT,
                "ir": {"type": "boolean"},
                "precision": {"enum": list(INFERENCE_PRECISIONS)},
                "runtime": {"enum": list(RUNTIMES)},
                "scoring": {"enum": list(SCORINGS)},
                "device": {"type": "string", "minLength": 1},
            },
        },
    },
}


@dataclass
class WandaConfig:
    """Stage 1: which weights to zero and from what calibration data."""

    sparsity_level: float = 0.5
    pattern: str = "unstructured"  # unstructured | 2:4 | 4:8
    method: str = "wanda"  # wanda | sparsegpt | magnitude
    #: uniform, or owl: block i pruned at sparsity_level - (D_i' - mean D'), D' the blocks' outlier ratios (share of
    #: Wanda scores above owl_threshold x their block's mean) rescaled to [0, 2 x owl_lambda] (OWL, Yin et al. 2024)
    sparsity_profile: str = "uniform"
    owl_threshold: float = 5.0
    owl_lambda: float = 0.08
    sparsegpt_blocksize: int = 128  # columns updated together (the OBS update is exact within and across blocks)
    sparsegpt_damp: float = 0.01  # Hessian dampening, a fraction of its mean diagonal
    use_variant: bool = False  # Wanda's adaptive per-row threshold instead of an exact count per row
    calibration: Optional[str] = None  # local text/JSON-lines file or HF dataset name; None = built-in default
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8  # calibration windows per block forward: larger is faster, costs activation memory
    target_modules: Optional[list[str]] = None  # None = every nn.Linear inside the decoder blocks
    ignored_scopes: list[str] = field(default_factory=list)
    device: str = "auto"  # where each block is moved, one at a time, while it is pruned (auto: GPU if any)

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity_level < 1:
            raise ShearsError(f"sparsity_level {self.sparsity_level} is outside [0, 1); use e.g. 0.5 for 50% zeros")
        if self.pattern not in PATTERNS:
            raise ShearsError(f"unknown sparsity pattern {self.pattern!r}; use one of {', '.join(PATTERNS)}")
        if self.method not in PRUNE_METHODS:
            raise ShearsError(f"unknown pruning method {self.method!r}; use one of {', '.join(PRUNE_METHODS)}")
        for name in ("nsamples", "seqlen", "batch_size"):
            if getattr(self, name) < 1:
                raise ShearsError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.nm is not None and self.sparsity_level != self.nm[0] / self.nm[1]:
            raise ShearsError(
                f"pattern {self.pattern} zeros exactly {self.nm[0] / self.nm[1]:g} of the weights, but sparsity_level is "
                f"{self.sparsity_level:g}; drop the sparsity setting or use the unstructured pattern"
            )
        if self.sparsity_profile not in SPARSITY_PROFILES:
            raise ShearsError(f"unknown sparsity_profile {self.sparsity_profile!r}; use one of {', '.join(SPARSITY_PROFILES)}")
        if self.sparsity_profile == "owl":
            if self.method == "magnitude" or self.nm is not None:
                raise ShearsError("the owl profile applies to unstructured wanda or sparsegpt; drop it or change method/pattern")
            if not 0 <= self.owl_lambda < 0.5 or not self.owl_lambda <= self.sparsity_level < 1 - self.owl_lambda:
                raise ShearsError(f"owl_lambda {self.owl_lambda} must keep every block's ratio inside [0, 1) around "
                                  f"sparsity_level {self.sparsity_level}; use a smaller owl_lambda")
        if self.use_variant and (self.method != "wanda" or self.nm is not None):
            raise ShearsError("use_variant applies to unstructured Wanda only; drop it or use --method wanda --pattern unstructured")

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """(N, M) of an N:M pattern (N zeros in every M consecutive input weights), None when unstructured."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters of the super-adapter; its rank r is the largest width of the search space."""

    r: Optional[int] = None  # None = the largest width; if given, every width must be <= r
    lora_alpha: float = 64.0
    lora_dropout: float = 0.1
    target_modules: Optional[list[str]] = None  # None = the modules named by the elasticity groups

    def __post_init__(self) -> None:
        if self.r is not None and (not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1):
            raise ShearsError(f"LoRA rank r must be a positive integer, got {self.r!r}")
        if not self.lora_alpha > 0:
            raise ShearsError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ShearsError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class ElasticityConfig:
    """The ``lora_rank`` search space as written in the config, before it is matched against a model.

    ``groups[i]`` lists module patterns: short names (``q_proj``), regular expressions, or NNCF node-name
    patterns of the original configs (``{re}.../Linear[q_proj]/ModuleDict[lora_A]/...``). Each group is
    expanded to one group per decoder block. ``widths[i]`` is the list of ranks of group i, largest first.
    """

    groups: list[list[str]]
    widths: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.widths):
            raise ShearsError(
                f"the elasticity config has {len(self.groups)} groups but {len(self.widths)} width lists; give one list per group"
            )
        for i, ws in enumerate(self.widths):
            if not ws or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in ws):
                raise ShearsError(f"widths of group {i} must be positive integers, got {ws}")
            if len(set(ws)) != len(ws):
                raise ShearsError(f"widths of group {i} repeat a value: {ws}; list each rank once")
        self.widths = [sorted(ws, reverse=True) for ws in self.widths]

    @property
    def max_rank(self) -> int:
        return max(max(ws) for ws in self.widths)


@dataclass
class NLSConfig:
    """Stage 2: the elastic super-adapter and how NLS samples sub-adapters while training it."""

    elasticity: ElasticityConfig
    lora: LoraSettings = field(default_factory=LoraSettings)
    sampling: str = "uniform"  # uniform | sandwich (maximal + minimal + random each step)
    sample_every: str = "micro_batch"  # micro_batch | step
    #: SQFT's SparsePEFT: train the update masked by the sparsity pattern, (B·A) ⊙ (W != 0), so that every
    #: sub-adapter merges into the sparse weights without filling a zero (``merge``, ``export --merge``)
    sparse_adapter: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ShearsError(f"unknown NLS sampling {self.sampling!r}; use one of {', '.join(SAMPLINGS)}")
        if self.sample_every not in SAMPLE_EVERY:
            raise ShearsError(f"unknown sample_every {self.sample_every!r}; use one of {', '.join(SAMPLE_EVERY)}")
        r = self.lora.r
        if r is not None and self.elasticity.max_rank > r:
            raise ShearsError(
                f"width {self.elasticity.max_rank} exceeds the LoRA rank r={r}; list widths <= r or raise lora.r"
            )

    @property
    def max_rank(self) -> int:
        """The super-adapter's LoRA rank."""
        return self.lora.r or self.elasticity.max_rank


@dataclass
class TrainingConfig:
    """Trainer hyper-parameters (the paper's Tables 7-9 by default) and the instruction data."""

    data: list[str] = field(default_factory=list)
    learning_rate: float = 3e-4
    batch_size: int = 16
    micro_batch_size: Optional[int] = None  # None = batch_size // grad_accum
    grad_accum: int = 1
    epochs: float = 3.0
    max_steps: int = -1
    warmup_steps: int = 100
    warmup_ratio: float = 0.0
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    cutoff_len: int = 256
    train_on_inputs: bool = False
    val_set_size: float = 0.05  # a fraction (< 1) or a number of records (>= 1)
    max_train_samples: Optional[int] = None
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: Optional[int] = None  # None = keep every checkpoint
    seed: int = 42
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "cutoff_len", "logging_steps", "save_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ShearsError(f"training.{name} must be a positive integer, got {value!r}")
        for name in ("micro_batch_size", "max_train_samples", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ShearsError(f"training.{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ShearsError(f"learning rate must be positive, got {self.learning_rate}")
        if not self.epochs > 0:
            raise ShearsError(f"epochs must be positive, got {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ShearsError(f"max_steps must be a positive number of optimizer steps (or -1 to use epochs), got {self.max_steps}")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio <= 1:
            raise ShearsError("warmup_steps must be >= 0 and warmup_ratio in [0, 1]")
        if self.val_set_size < 0:
            raise ShearsError(f"val_set_size must be >= 0 (a fraction < 1 or a number of records), got {self.val_set_size}")
        if self.micro_batch_size is None and self.batch_size % self.grad_accum:
            raise ShearsError(
                f"batch_size {self.batch_size} is not a multiple of grad_accum {self.grad_accum}; "
                "the micro-batch is batch_size // grad_accum, choose values that divide"
            )
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ShearsError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}; "
                "choose batch_size = micro_batch_size x grad_accum"
            )
        if self.micro_batch_size is not None and self.grad_accum != 1 and self.micro_batch_size * self.grad_accum != self.batch_size:
            raise ShearsError(
                f"micro_batch_size {self.micro_batch_size} x grad_accum {self.grad_accum} != batch_size {self.batch_size}; "
                "give only two of the three"
            )

    @property
    def micro_batch(self) -> int:
        """Samples per forward pass and device: ``micro_batch_size`` or ``batch_size // grad_accum``."""
        return self.micro_batch_size or self.batch_size // self.grad_accum

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step (one process)."""
        return self.batch_size // self.micro_batch


@dataclass
class SearchConfig:
    """Stage 3: which sub-adapter to pick and how to score candidates."""

    strategy: str = "heuristic"  # or a CONFIG.json holding {group: width}
    eval: str = "loss"  # "loss" (validation split of the super-adapter) or comma-separated tasks (TASK or TASK=FILE)
    budget: int = 50  # configurations scored by hill-climbing / nsga2
    patience: int = 3  # turns (hill-climbing) or generations (nsga2) without progress before stopping
    limit: Optional[int] = None  # first N validation records / task samples
    population: int = 8  # NSGA-II population size
    neighbours: int = 8  # neighbours scored per hill-climbing turn
    references: bool = True  # also score maximal / heuristic / minimal (outside the budget) for the report
    batch_size: int = 8
    cutoff_len: int = 256  # tokens per validation record, as in training
    seed: int = 0
    device: str = "auto"  # where the model scores candidates (auto: GPU if any)

    def __post_init__(self) -> None:
        if self.strategy not in SEARCH_STRATEGIES and not self.strategy.endswith(".json"):
            raise ShearsError(
                f"unknown search strategy {self.strategy!r}; use one of {', '.join(SEARCH_STRATEGIES)} or a CONFIG.json"
            )
        if self.budget < 1:
            raise ShearsError(f"search budget must be at least 1, got {self.budget}")
        for name in ("patience", "neighbours", "batch_size", "cutoff_len"):
            if getattr(self, name) < 1:
                raise ShearsError(f"search {name} must be a positive integer, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ShearsError(f"--limit must be a positive number of samples, got {self.limit}")
        if self.population < 2:
            raise ShearsError(f"NSGA-II population must be at least 2, got {self.population}")


@dataclass
class ExportConfig:
    """Stage 4: OpenVINO IR precision and the sparse-weights decompression rate."""

    quantize: str = "w8a8"
    sparse_rate: Union[str, float] = "auto"
    calibration: Optional[str] = None  # W8A8 calibration text; None = stage 1's default source
    nsamples: int = 64
    seqlen: int = 256
    seed: int = 0
    #: W8A8 only: Linear modules (names or regexes, as in stage 1) whose *inputs* stay float; their weights are
    #: int8 weight-only. None = each block's MLP output projection (down_proj & co.), whose input outliers
    #: per-tensor int8 cannot represent, and the (unpruned) output head; [] = every Linear W8A8.
    ignored_scopes: Optional[list[str]] = None
    #: NNCF's overflow fix (7-bit weights, against int8 saturation on CPUs without VNNI / AMX). NNCF's default,
    #: first_layer_only: on SmolLM2, 'enable' moved the W8A8 model further from the float one.
    overflow_fix: str = "first_layer_only"
    #: the precision OpenVINO runs the IR's float ops in, stored in the IR and applied by ``ir.ov_config``. f32 by
    #: default: on AMX CPUs OpenVINO would otherwise pick bf16, which moves the IR away from the torch model for
    #: no gain in decode speed (benchmarks/RESULTS.md, "Inference precision").
    inference_precision: str = "f32"
    #: merge a sparsity-masked adapter (trained with ``sparse_adapter``) into the sparse weights: a plain sparse IR,
    #: no adapter MatMuls; False exports the adapter unmerged beside the base MatMuls
    merge: bool = False
    #: in-ir: the adapter as MatMuls inside the IR (any OpenVINO loader runs it); runtime: the base IR once, plus one
    #: safetensors file per adapter in ``genai_adapters/`` that OpenVINO GenAI applies at run time (scalings folded)
    adapter_mode: str = "in-ir"

    def __post_init__(self) -> None:
        if self.adapter_mode not in ADAPTER_MODES:
            raise ShearsError(f"unknown adapter mode {self.adapter_mode!r}; use one of {', '.join(ADAPTER_MODES)}")
        if self.adapter_mode == "runtime" and self.merge:
            raise ShearsError("--merge and --adapter-mode runtime exclude each other: a merged adapter has no file to apply "
                              "at run time; drop one of them")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ShearsError(f"unknown inference precision {self.inference_precision!r}; use one of {', '.join(INFERENCE_PRECISIONS)}")
        if self.quantize not in QUANTIZE_MODES:
            raise ShearsError(f"unknown quantization {self.quantize!r}; use one of {', '.join(QUANTIZE_MODES)}")
        if self.overflow_fix not in OVERFLOW_FIX:
            raise ShearsError(f"unknown overflow_fix {self.overflow_fix!r}; use one of {', '.join(OVERFLOW_FIX)}")
        if isinstance(self.ignored_scopes, str):
            self.ignored_scopes = [p.strip() for p in self.ignored_scopes.split(",") if p.strip()]
        if self.sparse_rate != "auto":
            try:
                rate = float(self.sparse_rate)
            except (TypeError, ValueError):
                raise ShearsError(f"--sparse-rate must be 'auto' or a number in [0, 1], got {self.sparse_rate!r}") from None
            if not 0 <= rate <= 1:
                raise ShearsError(f"--sparse-rate must be 'auto' or a number in [0, 1], got {self.sparse_rate}")
            self.sparse_rate = rate


@dataclass
class BenchConfig:
    """CPU benchmark: one prompt of ``prompt_len`` random tokens, ``new_tokens`` greedy steps, ``repeats`` times."""

    prompt_len: int = 32
    new_tokens: int = 32
    threads: Optional[int] = None  # None = OpenVINO's default (all physical cores)
    repeats: int = 5
    precision: Optional[str] = None  # None = the precision stored in the IR (f32 | bf16 | default)
    #: genai: timed through OpenVINO GenAI's LLMPipeline (its PerfMetrics), the path users deploy; infer: the IR's
    #: own infer request step by step. The kernel of every FullyConnected is read from an infer-request profile.
    runtime: str = "genai"
    adapter: Optional[str] = None  # genai only: a runtime adapter (exported name, GenAI .safetensors or PEFT folder)

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in INFERENCE_PRECISIONS:
            raise ShearsError(f"unknown --precision {self.precision!r}; use one of {', '.join(INFERENCE_PRECISIONS)}")
        if self.runtime not in RUNTIMES:
            raise ShearsError(f"unknown --runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.adapter is not None and self.runtime != "genai":
            raise ShearsError("--adapter at run time needs --runtime genai; an adapter inside the IR needs no --adapter")
        for name in ("prompt_len", "new_tokens", "threads", "repeats"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ShearsError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    batch_size: int = 8
    max_new_tokens: Optional[int] = None  # None = the task's own: 256 for math, 32 for commonsense (LLM-Adapters)
    ir: bool = False  # also score the exported IR (on the CPU, as it will run)
    precision: Optional[str] = None  # the IR's inference precision; None = the one stored in the IR
    device: str = "auto"  # where the torch model generates (auto: GPU if any)
    #: how the IR generates: optimum-intel's OVModelForCausalLM (infer) or OpenVINO GenAI's LLMPipeline (genai)
    runtime: str = "infer"
    scoring: str = "generate"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ShearsError(f"unknown --runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.scoring not in SCORINGS:
            raise ShearsError(f"unknown --scoring {self.scoring!r}; use one of {', '.join(SCORINGS)}")
        if self.precision is not None and self.precision not in INFERENCE_PRECISIONS:
            raise ShearsError(f"unknown --precision {self.precision!r}; use one of {', '.join(INFERENCE_PRECISIONS)}")


@dataclass
class ShearsConfig:
    """A whole pipeline; a stage's section is None when the config does not describe that stage."""

    model: Optional[str] = None
    output: Optional[str] = None
    input_info: Any = None
    compression: Optional[WandaConfig] = None
    nls: Optional[NLSConfig] = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _path_of(error: jsonschema.ValidationError) -> str:
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn the most specific schema error into one line naming the key and the allowed values."""
    while error.context:  # oneOf / anyOf: report the branch that got furthest
        error = max(error.context, key=lambda e: (e.validator not in ("type", "const"), len(list(e.absolute_path))))
    where = _path_of(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"unknown key {', '.join(repr(k) for k in extra)} in {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{where} = {error.instance!r} is not allowed; use one of {', '.join(map(repr, error.validator_value))}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"{where} = {error.instance!r} is out of range ({error.message.split(' is ', 1)[-1]})"
    if error.validator == "required":
        return f"{where} is missing a required key: {error.message.split(' ')[0]}"
    return f"{where}: {error.message}"


def validate(raw: Any, source: str = "config") -> None:
    """Check a parsed config against :data:`SCHEMA`; raise :class:`ShearsError` with one readable line."""
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: (len(list(e.absolute_path)), str(e.message)))
    if errors:
        raise ShearsError(f"invalid {source}: {_describe(errors[-1])}")


def _elasticity(training: dict) -> Optional[ElasticityConfig]:
    el = training.get("elasticity") or {}
    dims = el.get("available_elasticity_dims")
    if "lora_rank" in el:
        lr = el["lora_rank"]
        widths = lr["widths"]
        per_group = widths if isinstance(widths[0], list) else [list(widths) for _ in lr["groups"]]
        return ElasticityConfig(groups=[list(g) for g in lr["groups"]], widths=per_group)
    if "width" in el:
        w = el["width"]
        return ElasticityConfig(groups=[list(g) for g in w["overwrite_groups"]], widths=[list(x) for x in w["overwrite_groups_widths"]])
    if dims:
        raise ShearsError(
            f"elasticity dims {dims} are listed but no 'lora_rank' (or 'width') section defines the groups and widths"
        )
    return None


def from_dict(raw: dict, source: str = "config") -> ShearsConfig:
    """Validate a parsed config and build the typed :class:`ShearsConfig`."""
    if isinstance(raw, dict) and "trust_remote_code" in raw:
        # a file must never switch on code execution: only the command-line flag or an explicit API argument can
        raise ShearsError(f"{source} sets trust_remote_code, which is honoured only from the command line; remove the key "
                          "and pass --trust-remote-code if you trust the model folder's code")
    validate(raw, source)
    cfg = ShearsConfig(
        model=raw.get("model"),
        output=raw.get("output"),
        input_info=raw.get("input_info"),
    )
    comp = raw.get("compression")
    if isinstance(comp, list):
        comp = comp[0] if comp else None
    if comp is not None:
        comp = dict(comp)
        comp["method"] = comp.pop("algorithm")
        cfg.compression = WandaConfig(**comp)
    nas = raw.get("bootstrapNAS") or {}
    training = nas.get("training")
    if training is not None:
        elasticity = _elasticity(training)
        if elasticity is None:
            raise ShearsError("bootstrapNAS.training has no elasticity section; add elasticity.lora_rank with groups and widths")
        cfg.nls = NLSConfig(
            elasticity=elasticity,
            lora=LoraSettings(**training.get("lora", {})),
            sampling=training.get("sampling", "uniform"),
            sample_every=training.get("sample_every", "micro_batch"),
            sparse_adapter=training.get("sparse_adapter", False),
        )
    search = dict(nas.get("search") or {})
    search.pop("algorithm", None)
    if "num_evals" in search:
        search.setdefault("budget", search.pop("num_evals"))
    cfg.search = SearchConfig(**search)
    t = dict(raw.get("training") or {})
    if isinstance(t.get("data"), str):
        t["data"] = [t["data"]]
    cfg.training = TrainingConfig(**t)
    cfg.export = ExportConfig(**(raw.get("export") or {}))
    cfg.bench = BenchConfig(**(raw.get("bench") or {}))
    cfg.eval = EvalConfig(**(raw.get("eval") or {}))
    if cfg.export.merge and cfg.nls is not None and not cfg.nls.sparse_adapter:
        raise ShearsError("export.merge needs bootstrapNAS.training.sparse_adapter: true (a plain LoRA update would fill "
                          "the pruned zeros when merged); set it, or drop export.merge to export the adapter unmerged")
    return cfg


def load_config(path: str | os.PathLike) -> ShearsConfig:
    """Read, validate and type an NNCF-style JSON config file."""
    return from_dict(read_json(path, "config file"), source=f"config {os.fspath(path)}")


def replace(section: Any, **overrides: Any) -> Any:
    """Apply CLI overrides (those not None) to a config dataclass, re-running its validation."""
    return dataclasses.replace(section, **{k: v for k, v in overrides.items() if v is not None})
