"""What every stage returns: one report type per stage, and the file it is written to beside the stage's output.

A report is a JSON document first: the stage writes it next to what it made, later stages and ``run``'s summary
read it back, and users read it with any JSON tool. So each is a ``TypedDict`` - checked by type checkers and
IDEs, and the very object that is written (``to_dict`` would be the identity) - not a class whose dict form could
drift from what lands on disk. Keys marked ``NotRequired`` appear only in some runs (a baseline, a resumed
training, a GenAI adapter).
"""

from typing import Optional, TypedDict

from typing_extensions import NotRequired  # typing's own from Python 3.11; torch depends on typing_extensions

#: stage -> the report file it writes in its output folder (``run``'s ``report.json`` sits in the run folder)
REPORT_FILES = {
    "prune": "sparsity_report.json",
    "train": "training_report.json",
    "search": "search_report.json",
    "export": "export_report.json",
    "bench": "bench_report.json",
    "eval": "eval_report.json",
    "merge": "merge_report.json",
    "run": "report.json",
}


class SparsityReport(TypedDict):
    """prune: the zero fraction of every pruned projection, of all of them, and of every block."""

    model: NotRequired[str]
    method: str
    pattern: str
    sparsity_level: float
    use_variant: bool
    #: zeros / parameters over every pruned projection
    sparsity: float
    zeros: int
    params: int
    #: the calibration text (None for magnitude pruning)
    calibration: Optional[dict]
    #: the sparsity profile (uniform, or OWL with its outlier ratios) and ``block_sparsity``, one per block
    layer_sparsity: dict
    seconds: float
    #: projection name -> its zero fraction
    modules: dict[str, float]


class TrainingReport(TypedDict):
    """train: the run (steps, loss curve, batch, optimizer), the data, and the search space's sizes."""

    model: str
    global_step: int
    max_steps: int
    epoch: Optional[float]
    train_loss: float
    train_seconds: float
    seconds_per_step: float
    resumed_from: Optional[str]
    data: dict
    batch: dict
    optimizer: dict
    nls: dict
    trainable_params: int
    total_params: int
    #: how often each rank was sampled per group
    sampled_configs: dict
    loss_curve: list[dict]
    log_history: list[dict]


class SearchReport(TypedDict):
    """search: the chosen sub-adapter, the references, the Pareto front and every evaluation."""

    strategy: str
    evaluator: dict
    budget: int
    patience: int
    seed: int
    #: True when a test set chose the sub-adapter: its score on that set is then biased
    used_test_set: bool
    search_space: dict
    search_seconds: float
    num_evaluations: int
    chosen: dict
    pareto_front: list[dict]
    references: dict[str, Optional[dict]]
    evaluations: list[dict]
    #: the super-adapter folder the sub-adapter was extracted from (absolute)
    super_adapter: NotRequired[str]


class ExportReport(TypedDict):
    """export: the IR's precision, sparse rate and kernels, the adapter as it was exported, every layer checked.

    A failed zero check raises, so a written report means every pruned zero survived (``zeros_checked_layers``).
    """

    model: str
    #: the adapter inside the IR's MatMuls (None: none, or run-time adapters only)
    adapter: Optional[str]
    adapters: list[str]
    quantize: str
    precision: str
    #: pruned layers W8A8 covers: the only ones OpenVINO's sparse kernel can take
    sparse_kernel_layers: int
    float_input_layers: list[str]
    #: layer -> why it was kept off the sparse kernel
    sparse_kernel_guarded_layers: dict[str, str]
    sparse_rate: Optional[float]
    min_pruned_sparsity: Optional[float]
    mean_pruned_sparsity: float
    pruned_layers: int
    zeros_checked_layers: int
    #: run-time adapters (``--adapter-mode runtime``): name -> :class:`GenAIAdapterReport`
    genai_adapters: dict[str, "GenAIAdapterReport"]
    #: weight bytes one decoded token reads: "this IR" (its sparse-kernel layers read sparse, as on an AMX CPU), and
    #: its base layers as dense "int8 weight-only" / "int4 weight-only" (ir.decode_weight_bytes)
    weight_bytes_per_token: dict[str, int]
    #: the IR's LoRA MatMuls
    lora_matmuls: int
    adapter_ranks: dict[str, int]
    adapter_config: Optional[dict]
    openvino_tokenizer: bool
    calibration: Optional[dict]
    #: the ExportConfig, every setting written out
    config: dict
    timing_s: dict[str, float]
    torch_sparsity: dict[str, float]
    layers: dict[str, dict]
    versions: dict[str, str]


class GenAIAdapterReport(TypedDict):
    """One run-time adapter file for OpenVINO GenAI (also written beside it as NAME.json)."""

    file: str
    source: str
    alpha: float
    layers: int
    ranks: dict[str, int]
    scaling_folded_into_lora_B: dict[str, float]
    smoothquant_compensated_layers: list[str]
    load: str


class BenchRun(TypedDict):
    """bench: the timings, memory and kernels of one IR."""

    ir: str
    runtime: str
    adapter: Optional[str]
    quantize: Optional[str]
    sparse_rate: Optional[float]
    inference_precision: str
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    tokens_per_s: float
    end_to_end_tokens_per_s: float
    compile_s: float
    peak_rss_mb: float
    rss_increase_mb: float
    fc_layers: int
    sparse_fc_layers: int
    #: weights a decode step reads (ir.weight_bytes: as each FullyConnected's kernel reads them), and that over the TPOT
    weight_mb_per_token: float
    weight_gb_per_s: float
    kernel_summary: dict[str, int]
    kernels: NotRequired[list[dict]]


class BenchReport(BenchRun):
    """bench: this IR's run, the CPU, and the baseline IR's run with the speed-ups when one was given."""

    cpu: dict
    config: dict
    sparse_kernel_ran: bool
    note: NotRequired[str]
    baseline: NotRequired[BenchRun]
    speedup_tpot: NotRequired[float]
    speedup_ttft: NotRequired[float]


class EvalReport(TypedDict):
    """evaluate: the model, adapter or IR scored, how it ran, and each task's result."""

    model: str
    adapter: Optional[str]
    ir: Optional[str]
    limit: Optional[int]
    runtime: str
    device: str
    inference_precision: str
    #: task -> accuracy (generation), acc / acc_norm with 95% intervals (likelihood) or perplexity (wikitext2)
    tasks: dict[str, dict]


class MergeReport(TypedDict):
    """merge: the layers a sparsity-masked adapter was merged into and the zeros each kept."""

    model: str
    adapter: str
    merged_layers: int
    zeros_kept: int
    zeros_kept_per_layer: dict[str, int]


class RunReport(TypedDict):
    """run: every stage's own report gathered into one summary (``report.json`` + ``report.md``)."""

    model: Optional[str]
    stage_seconds_this_run: dict[str, float]
    stage_seconds: dict[str, Optional[float]]
    sparsity: Optional[SparsityReport]
    training: Optional[dict]
    loss_curve_png: Optional[str]
    search: Optional[dict]
    export: Optional[ExportReport]
    bench: Optional[BenchReport]
    #: ``{"torch": EvalReport, "openvino": EvalReport}``, with ``"dense"`` and ``"sparse"`` (untuned) when
    #: ``eval.baselines`` asks for them
    eval: Optional[dict[str, EvalReport]]
