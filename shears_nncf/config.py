"""The typed settings of each pipeline stage: the one place a setting, its default, its rule and its help live.

Each field is declared with :func:`shears_nncf.options.option`; the JSON schema of the config file
(:mod:`shears_nncf.config_file`), the command-line options (:mod:`shears_nncf.cli`) and the checks a section
runs on itself all derive from that declaration. ``__post_init__`` adds only the rules that tie fields together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import ShearsError
from .options import POSITIVE_INT, STRINGS, check_fields, enum, nullable, option

PATTERNS = ("unstructured", "2:4", "4:8")
PRUNE_METHODS = ("wanda", "sparsegpt", "magnitude")
#: uniform: every pruned layer at sparsity_level; owl: per-block ratios from outlier statistics (Yin et al. 2024)
SPARSITY_PROFILES = ("uniform", "owl")
SEARCH_STRATEGIES = ("heuristic", "maximal", "minimal", "hill-climbing", "nsga2")
QUANTIZE_MODES = ("w8a8", "int8-weights", "int4-weights", "none")
#: OpenVINO inference precision of the IR's float ops; 'default' = OpenVINO's choice (bf16 on AMX CPUs, f32 elsewhere).
INFERENCE_PRECISIONS = ("f32", "bf16", "default")
#: OpenVINO's KV_CACHE_PRECISION, which compile_model reads from the IR itself
KV_CACHE_PRECISIONS = ("f16", "bf16", "u8", "f32")
#: in-ir: the adapter's MatMuls inside the IR; runtime: a base IR + adapter files OpenVINO GenAI applies at run time.
ADAPTER_MODES = ("in-ir", "runtime")
FLOAT_INPUT_WEIGHTS = ("int8", "int4")
#: training responses: LLM-Adapters' label ("the correct answer is answer2") or the answer text lm-eval scores
RESPONSE_FORMATS = ("label", "answer-text")
#: genai: OpenVINO GenAI's LLMPipeline (the runtime users deploy); infer: the IR's own infer request, step by step.
RUNTIMES = ("genai", "infer")
#: generate: LLM-Adapters' generation + answer extraction; likelihood: each choice's log-likelihood (lm-eval's acc).
SCORINGS = ("generate", "likelihood")
SAMPLINGS = ("uniform", "sandwich")
SAMPLE_EVERY = ("micro_batch", "step")
STAGES = ("prune", "train", "search", "export", "bench", "eval")

_SEED = {"type": "integer"}
_DEVICE = {"type": "string", "minLength": 1}
_PATH = nullable({"type": "string", "minLength": 1})
_FRACTION = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_DEVICE_HELP = "auto (GPU if any), cpu, cuda, cuda:1 ..."
_BASE_MODEL_ID_HELP = (
    "base_model_name_or_path the adapter records, for stock loaders (default: the model's hub id, "
    "or its folder's absolute path)"
)
_CALIBRATION_HELP = (
    "text / JSON-lines file (text records, or training records: instruction + output) or Hugging Face "
    "dataset name (default: the built-in C4 sample)"
)


def _comma_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass
class PruningConfig:
    """Stage 1: which weights to zero (Wanda, SparseGPT or magnitude; uniform or OWL) and from what calibration data."""

    sparsity_level: float = option(
        0.5, schema=_FRACTION, flag="--sparsity", help="fraction of zeros per pruned projection"
    )
    pattern: str = option(
        "unstructured", schema=enum(PATTERNS), help="unstructured, or N:M (N zeros in every M inputs)"
    )
    method: str = option("wanda", schema=enum(PRUNE_METHODS), help="pruning criterion")
    #: block i pruned at sparsity_level - (D_i' - mean D'), D' the blocks' outlier ratios (share of Wanda scores
    #: above owl_threshold x their block's mean) rescaled to [0, 2 x owl_lambda] (OWL, Yin et al. 2024)
    sparsity_profile: str = option(
        "uniform",
        schema=enum(SPARSITY_PROFILES),
        help="uniform, or owl: per-block ratios from outlier statistics, around --sparsity",
    )
    owl_threshold: float = option(
        5.0, schema=_POSITIVE, help="OWL: a score is an outlier above this many times its block's mean"
    )
    owl_lambda: float = option(
        0.08,
        schema={"type": "number", "minimum": 0, "exclusiveMaximum": 0.5},
        help="OWL: block ratios spread over sparsity +- this",
    )
    sparsegpt_blocksize: int = option(128, schema=POSITIVE_INT, help="SparseGPT: columns updated together")
    sparsegpt_damp: float = option(
        0.01, schema=_POSITIVE, help="SparseGPT: Hessian dampening, a fraction of its mean diagonal"
    )
    use_variant: bool = option(
        False, schema={"type": "boolean"}, help="Wanda's adaptive per-row threshold (unstructured wanda)"
    )
    calibration: Optional[str] = option(None, schema=_PATH, help=_CALIBRATION_HELP)
    nsamples: int = option(128, schema=POSITIVE_INT, help="number of calibration windows")
    seqlen: int = option(2048, schema=POSITIVE_INT, help="tokens per calibration window")
    seed: int = option(0, schema=_SEED, help="seed of the random calibration windows")
    batch_size: int = option(8, schema=POSITIVE_INT, help="calibration windows per block forward (memory vs speed)")
    target_modules: Optional[list[str]] = option(
        None,
        schema=nullable(STRINGS),
        cli_type=_comma_list,
        help="Linear names / regexes to prune (default: every Linear in the decoder blocks)",
    )
    ignored_scopes: list[str] = option(
        schema=STRINGS, factory=list, cli_type=_comma_list, help="Linear names / regexes kept dense"
    )
    device: str = option("auto", schema=_DEVICE, help=f"where each block is pruned: {_DEVICE_HELP}")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.nm is not None and self.sparsity_level != self.nm[0] / self.nm[1]:
            raise ShearsError(
                f"pattern {self.pattern} zeros exactly {self.nm[0] / self.nm[1]:g} of the weights, "
                "but sparsity_level is "
                f"{self.sparsity_level:g}; drop the sparsity setting or use the unstructured pattern"
            )
        if self.sparsity_profile == "owl":
            if self.method == "magnitude" or self.nm is not None:
                raise ShearsError(
                    "the owl profile applies to unstructured wanda or sparsegpt; drop it or change method/pattern"
                )
            if not self.owl_lambda <= self.sparsity_level < 1 - self.owl_lambda:
                raise ShearsError(
                    f"owl_lambda {self.owl_lambda} must keep every block's ratio inside [0, 1) around "
                    f"sparsity_level {self.sparsity_level}; use a smaller owl_lambda"
                )
        if self.use_variant and (self.method != "wanda" or self.nm is not None):
            raise ShearsError(
                "use_variant applies to unstructured Wanda only; drop it or use --method wanda --pattern unstructured"
            )

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """(N, M) of an N:M pattern (N zeros in every M consecutive input weights), None when unstructured."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)


@dataclass
class LoraSettings:
    """LoRA hyper-parameters of the super-adapter; its rank r is the largest rank of the search space."""

    r: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="LoRA rank (default: the largest rank of the space)"
    )
    lora_alpha: float = option(64.0, schema=_POSITIVE, help="LoRA alpha; PEFT's scaling is alpha / r")
    lora_dropout: float = option(0.1, schema=_FRACTION, help="dropout on the adapter's input")
    target_modules: Optional[list[str]] = option(
        None, schema=nullable(STRINGS), help="modules with an adapter (default: those the elastic groups name)"
    )

    def __post_init__(self) -> None:
        check_fields(self)


_RANKS = {"type": "array", "minItems": 1, "items": POSITIVE_INT}


@dataclass
class ElasticityConfig:
    """The ``lora_rank`` search space as written in the config, before it is matched against a model.

    ``groups[i]`` lists module patterns: short names (``q_proj``), regular expressions, or NNCF node-name
    patterns of the original configs (``{re}.../Linear[q_proj]/ModuleDict[lora_A]/...``). Each group is
    expanded to one group per decoder block. ``ranks[i]`` is the list of ranks of group i, largest first
    (the config file's ``widths``).
    """

    groups: list[list[str]] = option(schema={"type": "array", "minItems": 1, "items": {**STRINGS, "minItems": 1}})
    ranks: list[list[int]] = option(schema={"type": "array", "minItems": 1, "items": _RANKS})

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.ranks):
            raise ShearsError(
                f"the elasticity config has {len(self.groups)} groups but {len(self.ranks)} width "
                "lists; give one list per group"
            )
        for i, ranks in enumerate(self.ranks):
            if not ranks or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in ranks):
                raise ShearsError(f"widths of group {i} must be positive integers, got {ranks}")
            if len(set(ranks)) != len(ranks):
                raise ShearsError(f"widths of group {i} repeat a value: {ranks}; list each rank once")
        check_fields(self)
        self.ranks = [sorted(ranks, reverse=True) for ranks in self.ranks]

    @property
    def max_rank(self) -> int:
        return max(max(ranks) for ranks in self.ranks)


@dataclass
class NLSConfig:
    """Stage 2: the elastic super-adapter and how NLS samples sub-adapters while training it."""

    elasticity: ElasticityConfig
    lora: LoraSettings = field(default_factory=LoraSettings)
    sampling: str = option(
        "uniform", schema=enum(SAMPLINGS), help="uniform, or sandwich (maximal + minimal + random each step)"
    )
    sample_every: str = option("micro_batch", schema=enum(SAMPLE_EVERY), help="how often a new sub-adapter is sampled")
    #: SQFT's SparsePEFT: train the update masked by the sparsity pattern, (B·A) ⊙ (W != 0), so that every
    #: sub-adapter merges into the sparse weights without filling a zero (``merge``, ``export --merge``)
    sparse_adapter: bool = option(
        False,
        schema={"type": "boolean"},
        help="mask the adapter update by the sparsity pattern (SQFT) so that it merges without filling zeros",
    )
    base_model_id: Optional[str] = option(None, schema=_PATH, help=_BASE_MODEL_ID_HELP)

    def __post_init__(self) -> None:
        check_fields(self, ("sampling", "sample_every", "sparse_adapter", "base_model_id"))
        r = self.lora.r
        if r is not None and self.elasticity.max_rank > r:
            raise ShearsError(
                f"rank {self.elasticity.max_rank} exceeds the LoRA rank r={r}; list widths <= r or raise lora.r"
            )

    @property
    def max_rank(self) -> int:
        """The super-adapter's LoRA rank."""
        return self.lora.r or self.elasticity.max_rank


@dataclass
class TrainingConfig:
    """Trainer hyper-parameters (the paper's Tables 7-9 by default) and the instruction data."""

    data: list[str] = option(
        schema=STRINGS,
        factory=list,
        cli_type=_comma_list,
        help="comma-separated data files (LLM-Adapters JSON, GSM8K JSON lines) or HF dataset names",
    )
    learning_rate: float = option(3e-4, schema=_POSITIVE, flag="--lr", help="peak learning rate")
    batch_size: int = option(16, schema=POSITIVE_INT, help="samples per optimizer step")
    micro_batch_size: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="samples per forward pass (default: batch_size // grad_accum)"
    )
    grad_accum: int = option(1, schema=POSITIVE_INT, help="micro-batches per optimizer step")
    epochs: float = option(3.0, schema=_POSITIVE, help="passes over the training data")
    max_steps: int = option(
        -1, schema={"oneOf": [{"const": -1}, POSITIVE_INT]}, help="optimizer steps; -1 = as many as the epochs take"
    )
    warmup_steps: int = option(100, schema={"type": "integer", "minimum": 0}, help="linear warm-up steps")
    warmup_ratio: float = option(
        0.0, schema={"type": "number", "minimum": 0, "maximum": 1}, help="warm-up as a fraction of the steps"
    )
    lr_scheduler_type: str = option(
        "linear", schema={"type": "string", "minLength": 1}, help="a transformers scheduler name"
    )
    weight_decay: float = option(0.0, schema={"type": "number", "minimum": 0}, help="AdamW weight decay")
    cutoff_len: int = option(256, schema=POSITIVE_INT, help="tokens per training record")
    train_on_inputs: bool = option(False, schema={"type": "boolean"}, help="also train on the prompt tokens")
    #: answer-text: the form likelihood scoring reads (``eval --scoring likelihood``), which a small model can learn;
    #: label: LLM-Adapters' (the paper's), for generation scoring
    response_format: str = option(
        "label",
        schema=enum(RESPONSE_FORMATS),
        help="label: LLM-Adapters' prompt and response ('the correct answer is answer2'); "
        "answer-text: multiple-choice records as lm-eval scores them ('Question: ... Answer:' "
        "and the gold choice's text; BoolQ yes/no)",
    )
    val_set_size: float = option(
        0.05,
        schema={"type": "number", "minimum": 0},
        help="validation records carved off the training data: a fraction (< 1) or a count",
    )
    max_train_samples: Optional[int] = option(None, schema=nullable(POSITIVE_INT), help="first N training records")
    gradient_checkpointing: bool = option(
        False, schema={"type": "boolean"}, help="recompute activations (memory vs speed)"
    )
    logging_steps: int = option(10, schema=POSITIVE_INT, help="steps between loss log lines")
    save_steps: int = option(200, schema=POSITIVE_INT, help="steps between checkpoints")
    save_total_limit: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="checkpoints kept (default: all)"
    )
    seed: int = option(42, schema=_SEED, help="seed of the data order and the sampled sub-adapters")
    group_by_length: bool = option(
        False, schema={"type": "boolean"}, help="batch records of similar length together: less padding, faster steps"
    )
    bf16: bool = option(
        False,
        schema={"type": "boolean"},
        help="frozen base weights in bf16 and bf16 autocast, the adapter in f32 (GPU, or an AMX CPU)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
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
        if (
            self.micro_batch_size is not None
            and self.grad_accum != 1
            and self.micro_batch_size * self.grad_accum != self.batch_size
        ):
            raise ShearsError(
                f"micro_batch_size {self.micro_batch_size} x grad_accum {self.grad_accum} != "
                f"batch_size {self.batch_size}; "
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

    strategy: str = option(
        "heuristic",
        schema={
            "anyOf": [
                enum(SEARCH_STRATEGIES),
                {"type": "string", "pattern": r"\.json$", "description": "a CONFIG.json holding {group: rank}"},
            ]
        },
        help="how to pick the sub-adapter, or a CONFIG.json holding {group: rank}",
    )
    eval: str = option(
        "loss",
        schema={"type": "string", "minLength": 1},
        help="'loss' (the super-adapter's validation split) or comma-separated TASK (its test set: flagged in "
        "the report) or TASK=FILE",
    )
    budget: int = option(50, schema=POSITIVE_INT, help="configurations hill-climbing / nsga2 may score")
    patience: int = option(
        3, schema=POSITIVE_INT, help="turns (hill-climbing) or generations (nsga2) without progress before stopping"
    )
    limit: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="first N validation records or task samples"
    )
    population: int = option(8, schema={"type": "integer", "minimum": 2}, help="NSGA-II population size")
    neighbours: int = option(8, schema=POSITIVE_INT, help="neighbours scored per hill-climbing turn")
    references: bool = option(
        True, schema={"type": "boolean"}, help="also score maximal / heuristic / minimal for the report"
    )
    batch_size: int = option(8, schema=POSITIVE_INT, help="records per scoring forward")
    cutoff_len: int = option(256, schema=POSITIVE_INT, help="tokens per validation record, as in training")
    seed: int = option(0, schema=_SEED, help="seed of hill-climbing's and NSGA-II's random choices")
    device: str = option("auto", schema=_DEVICE, help=f"where candidates are scored: {_DEVICE_HELP}")
    base_model_id: Optional[str] = option(None, schema=_PATH, help=_BASE_MODEL_ID_HELP)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class AdvancedExportConfig:
    """Expert W8A8 settings of the export, as NNCF keeps its own in ``AdvancedQuantizationParameters`` (config file
    and Python only: ``ExportConfig(advanced=AdvancedExportConfig(float_input_weights="int4"))``)."""

    #: NNCF's SmoothQuant strength on MatMuls (its default 0.95; -1 = off)
    smooth_quant_alpha: float = option(
        0.95,
        schema={
            "oneOf": [{"const": -1}, {"type": "number", "minimum": 0, "maximum": 1}],
            "description": "-1 (off) or a number in [0, 1]",
        },
        help="W8A8: SmoothQuant alpha on MatMuls (how much of the activation range moves into the weights); -1 = off",
    )
    #: int4 (OpenVINO's usual LLM format, groups of 128, symmetric so every pruned zero stays zero) halves the bytes
    #: these layers read per token, since no sparse kernel serves a float-input layer, at an accuracy cost
    #: (docs/results.md, "Tried, no gain")
    float_input_weights: str = option(
        "int8",
        schema=enum(FLOAT_INPUT_WEIGHTS),
        help="W8A8: weight precision of the layers that keep float inputs (the MLP output "
        "projections by default): int8, or int4 (groups of 128; lm_head stays int8)",
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class ExportConfig:
    """Stage 4: OpenVINO IR precision, the sparse-weights decompression rate and how the adapter is deployed."""

    quantize: str = option("w8a8", schema=enum(QUANTIZE_MODES), help="weights (and activations) precision of the IR")
    sparse_rate: Union[str, float] = option(
        "auto",
        schema={"oneOf": [{"const": "auto"}, {"type": "number", "minimum": 0, "maximum": 1}]},
        cli_type=lambda s: s if s == "auto" else _number(s),
        help="OpenVINO's sparse-weights decompression rate: 'auto' (from the measured sparsity) or a number",
    )
    calibration: Optional[str] = option(
        None,
        schema=_PATH,
        help="W8A8 calibration: "
        + _CALIBRATION_HELP
        + "; the model's training data gives the task's activation ranges",
    )
    nsamples: int = option(64, schema=POSITIVE_INT, help="number of W8A8 calibration windows")
    seqlen: int = option(256, schema=POSITIVE_INT, help="tokens per W8A8 calibration window")
    seed: int = option(0, schema=_SEED, help="seed of the calibration windows")
    #: None = each block's MLP output projection (down_proj & co.), whose input outliers per-tensor int8 cannot
    #: represent, and the (unpruned) output head; [] = every Linear W8A8
    ignored_scopes: Optional[list[str]] = option(
        None,
        schema=nullable(STRINGS),
        cli_type=_comma_list,
        help="W8A8: comma-separated Linear names / regexes kept with float inputs "
        "(weight-only); default: the MLP output projections and lm_head; '' = none",
    )
    #: f32 by default: on AMX CPUs OpenVINO would otherwise pick bf16, which moves the IR away from the torch model
    #: for no gain in decode speed (docs/results.md)
    inference_precision: str = option(
        "f32",
        schema=enum(INFERENCE_PRECISIONS),
        help="precision OpenVINO runs the IR's float ops in, stored in the IR "
        "(default = OpenVINO's choice: bf16 on AMX CPUs)",
    )
    #: stored in the IR's runtime_options, which OpenVINO's compile_model applies by itself (unlike the precision
    #: hint, threads or performance hints); f16 as optimum-intel stores it (u8: docs/results.md)
    kv_cache_precision: str = option(
        "f16",
        schema=enum(KV_CACHE_PRECISIONS),
        help="precision of the KV cache, stored in the IR so that every OpenVINO loader uses it "
        "(u8: half the cache bytes of f16)",
    )
    merge: bool = option(
        False,
        schema={"type": "boolean"},
        help="merge a sparsity-masked adapter (train --sparse-adapter) into the sparse weights: no adapter MatMuls",
    )
    adapter_mode: str = option(
        "in-ir",
        schema=enum(ADAPTER_MODES),
        help="in-ir: the adapter as MatMuls inside the IR; runtime: the base IR once + "
        "genai_adapters/NAME.safetensors that OpenVINO GenAI applies at run time",
    )
    advanced: AdvancedExportConfig = field(default_factory=AdvancedExportConfig)

    def __post_init__(self) -> None:
        if isinstance(self.sparse_rate, int) and not isinstance(self.sparse_rate, bool):
            self.sparse_rate = float(self.sparse_rate)
        if isinstance(self.advanced, dict):  # as a config file gives it
            self.advanced = AdvancedExportConfig(**self.advanced)
        check_fields(self)
        if self.advanced.float_input_weights != "int8" and (self.quantize != "w8a8" or self.ignored_scopes is not None):
            # NNCF keeps the head int8 only as the last float MatMul: with other scopes it could be another layer
            raise ShearsError(
                "advanced.float_input_weights int4 applies only to quantize w8a8 with the default float-input "
                "layers (no ignored_scopes); use quantize int4-weights for int4 everywhere, or drop it"
            )
        if self.adapter_mode == "runtime" and self.merge:
            raise ShearsError(
                "--merge and --adapter-mode runtime exclude each other: a merged adapter has no file to apply "
                "at run time; drop one of them"
            )


def _number(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text  # the field's check names it


@dataclass
class BenchConfig:
    """CPU benchmark: one prompt of ``prompt_len`` random tokens, ``new_tokens`` greedy steps, ``repeats`` times."""

    prompt_len: int = option(32, schema=POSITIVE_INT, help="tokens of the random prompt")
    new_tokens: int = option(32, schema=POSITIVE_INT, help="greedy tokens generated per repeat")
    threads: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="inference threads (default: OpenVINO's, all physical cores)"
    )
    repeats: int = option(5, schema=POSITIVE_INT, help="timed generations (after one warm-up)")
    precision: Optional[str] = option(
        None, schema=nullable(enum(INFERENCE_PRECISIONS)), help="inference precision (default: the IR's stored one)"
    )
    #: the kernel of every FullyConnected is read from an infer-request profile either way
    runtime: str = option(
        "genai",
        schema=enum(RUNTIMES),
        help="genai: OpenVINO GenAI's LLMPipeline, the path users deploy; infer: the IR's own infer request",
    )
    adapter: Optional[str] = option(
        None,
        schema=_PATH,
        help="genai: a run-time adapter (a name exported with the IR, a GenAI .safetensors, or a PEFT folder)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.adapter is not None and self.runtime != "genai":
            raise ShearsError(
                "--adapter at run time needs --runtime genai; an adapter inside the IR needs no --adapter"
            )


@dataclass
class EvalConfig:
    """Accuracy: which tasks, how they are scored, and where the model runs."""

    tasks: list[str] = option(
        schema=STRINGS,
        factory=list,
        cli_type=_comma_list,
        help="comma-separated: gsm8k, AQuA, boolq, ..., wikitext2; TASK=FILE scores another file",
    )
    limit: Optional[int] = option(None, schema=nullable(POSITIVE_INT), help="first N samples of each task")
    batch_size: int = option(8, schema=POSITIVE_INT, help="prompts per generate call")
    max_new_tokens: Optional[int] = option(
        None, schema=nullable(POSITIVE_INT), help="override the task's generation length (math 256, commonsense 32)"
    )
    ir: bool = option(
        False, schema={"type": "boolean"}, help="run: also score the exported IR, on the CPU as it will run"
    )
    precision: Optional[str] = option(
        None,
        schema=nullable(enum(INFERENCE_PRECISIONS)),
        help="the IR's inference precision (default: its stored one); bf16 also loads a torch model in bf16",
    )
    device: str = option("auto", schema=_DEVICE, help=f"torch model only: {_DEVICE_HELP}")
    runtime: str = option(
        "infer",
        schema=enum(RUNTIMES),
        help="IR only: infer (optimum-intel) or genai (OpenVINO GenAI; --adapter then names a run-time adapter)",
    )
    scoring: str = option(
        "generate",
        schema=enum(SCORINGS),
        help="generate: LLM-Adapters' generation + answer extraction; likelihood: multiple-choice tasks "
        "scored by each choice's log-likelihood (acc / acc_norm with 95% intervals, as lm-eval)",
    )

    #: run only: what Shears keeps, scored the same way beside the tuned model
    baselines: bool = option(
        False, schema={"type": "boolean"}, help="run: also score the dense model and the untuned sparse model (torch)"
    )

    def __post_init__(self) -> None:
        check_fields(self)


#: the sections a config file holds as they are, by key (compression and bootstrapNAS are mapped: config_file.py)
SECTIONS = {"training": TrainingConfig, "export": ExportConfig, "bench": BenchConfig, "eval": EvalConfig}


@dataclass
class ShearsConfig:
    """A whole pipeline; a stage's section is None when the config does not describe that stage.

    Read and written as NNCF-style JSON by :mod:`shears_nncf.config_file` (``load_config`` / ``save_config``).
    """

    model: Optional[str] = None
    output: Optional[str] = None
    input_info: Any = None
    compression: Optional[PruningConfig] = None
    nls: Optional[NLSConfig] = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.export.merge and self.nls is not None and not self.nls.sparse_adapter:
            raise ShearsError(
                "export.merge needs bootstrapNAS.training.sparse_adapter: true (a plain LoRA update would fill "
                "the pruned zeros when merged); set it, or drop export.merge to export the adapter unmerged"
            )


#: The name stage 1's config had while it configured Wanda alone.
WandaConfig = PruningConfig
