"""OpenVINO GenAI, the runtime OpenVINO users deploy: the adapter files it reads, its pipeline, its timings.

``openvino_genai.LLMPipeline`` applies LoRA adapters at run time beside the base MatMuls (on CPU its dynamic
mode), so one sparse base IR serves several task sub-adapters and the pruned weights are never touched. Its
adapter format is PEFT's safetensors with three differences that decide whether a sub-adapter loads right:

* it ignores ``adapter_config.json`` and any alpha in the file, and multiplies every layer's ``B·A`` by one
  scalar per adapter. A Shears sub-adapter has per-layer ranks (``rank_pattern``) and alphas, so the file
  :func:`write_genai_adapter` writes has each layer's own scaling (PEFT's ``LoraLayer.scaling``) folded into its
  ``lora_B`` and is loaded with the scalar 1;
* it only knows plain LoRA: DoRA, trained biases and ``modules_to_save`` would be dropped silently, and a
  sparsity-masked (SQFT) adapter would be applied unmasked, so those are refused here;
* it takes the compile options as pipeline properties: :func:`load_pipeline` passes the IR's stored sparse rate
  and inference precision (:func:`shears_nncf.ir.ov_config`), as every other stage does.

Prompts are given as token ids from the model's Hugging Face tokenizer where results are compared with torch
(eval, bench, tests), so both runtimes see the same ids; ``generate`` uses the IR's own OpenVINO tokenizer.
``generate`` passes each prompt as is, no chat template (``--chat`` applies it; GenAI's own default would): the
adapters are trained on plain prompts, and the model cards (:mod:`shears_nncf.cards`) say the same. It checks what
GenAI would abort on or apply wrongly before the pipeline loads, caps the new tokens at the model's context, and
stops at the next token on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .adapters import MARKER_NAME, check_adapter_folder, is_masked
from .errors import ShearsError, first_line
from .io import read_json, write_json
from .reports import REPORT_FILES, GenAIAdapterReport

logger = logging.getLogger(__name__)

#: Where ``export`` writes the GenAI adapter files beside the base IR.
GENAI_ADAPTER_DIR = "genai_adapters"
#: The scalar every file written here is loaded with (the scalings are in the weights).
GENAI_ALPHA = 1.0
_SIDECAR = ".json"


# ------------------------------------------------------------------------------------------ adapter files


def adapter_scalings(
    adapter_dir: str | os.PathLike, model_dir: str | os.PathLike, trust_remote_code: bool = False
) -> dict[str, float]:
    """PEFT's scaling of every adapted layer (rank and alpha patterns, rsLoRA), by module name.

    Read from PEFT itself, injecting the adapter into the weightless model skeleton, so the rule is PEFT's.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from .elastic import check_sub_adapter
    from .models import model_skeleton

    cfg, _ = check_adapter_folder(adapter_dir)
    if cfg.get("use_dora"):
        raise ShearsError(
            f"adapter {adapter_dir} is a DoRA adapter, which OpenVINO GenAI cannot apply; export it in the IR"
        )
    if cfg.get("modules_to_save") or cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ShearsError(
            f"adapter {adapter_dir} trains biases or whole modules, which OpenVINO GenAI would drop; "
            "export it in the IR"
        )
    if is_masked(adapter_dir):
        raise ShearsError(
            f"adapter {adapter_dir} was trained sparsity-masked ({MARKER_NAME}): GenAI would apply it unmasked; "
            "merge it into the base with 'export --merge'"
        )
    check_sub_adapter(adapter_dir)
    lora = LoraConfig.from_pretrained(str(adapter_dir))
    skeleton = inject_adapter_in_model(lora, model_skeleton(os.fspath(model_dir), trust_remote_code))
    return {
        name: float(m.scaling["default"])
        for name, m in skeleton.named_modules()
        if isinstance(m, LoraLayer) and "default" in m.scaling
    }


def write_genai_adapter(
    adapter_dir: str | os.PathLike,
    model_dir: str | os.PathLike,
    output: str | os.PathLike,
    trust_remote_code: bool = False,
) -> GenAIAdapterReport:
    """Write ``adapter_dir`` as one safetensors file OpenVINO GenAI applies as is, with the scalar 1.

    ``model_dir`` is the base IR folder the file will run on (or any folder with the model's ``config.json``).
    Tensor names stay PEFT's (GenAI strips ``base_model.model.`` and matches the rest to the MatMuls); each
    ``lora_B`` is multiplied by its layer's scaling, and where the base IR is W8A8 each ``lora_A`` is divided by
    the SmoothQuant factor of its layer's input (:func:`shears_nncf.ir.input_smoothing`), since GenAI feeds the
    LoRA branch the MatMul's smoothed input. A ``.json`` beside the file says what it holds.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from .ir import IR_NAME, input_smoothing

    _, weights = check_adapter_folder(adapter_dir)
    scalings = adapter_scalings(adapter_dir, model_dir, trust_remote_code)
    smoothing = {}
    if (Path(model_dir) / IR_NAME).is_file():
        import openvino as ov

        smoothing = input_smoothing(ov.Core().read_model(Path(model_dir) / IR_NAME))
    tensors = load_file(str(weights))
    folded, ranks, smoothed = {}, {}, []
    for key, value in tensors.items():
        module = key.split(".lora_")[0].removeprefix("base_model.model.")
        if module not in scalings:
            raise ShearsError(
                f"adapter {adapter_dir} tensor {key} belongs to no adapted layer of its config; save the adapter again"
            )
        value = value.float()
        if ".lora_B." in key:
            value = value * scalings[module]
        elif ".lora_A." in key:
            ranks[module] = int(value.shape[0])
            if module in smoothing:  # the branch sees x * c: A / c gives back A x
                value = value / torch.from_numpy(smoothing[module])[None, :]
                smoothed.append(module)
        folded[key] = value.contiguous()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    save_file(folded, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, output)
    report = {
        "file": output.name,
        "source": os.fspath(adapter_dir),
        "alpha": GENAI_ALPHA,
        "layers": len(ranks),
        "ranks": ranks,
        "scaling_folded_into_lora_B": scalings,
        # lora_A divided by the base IR's SmoothQuant input factor: the file is for this base IR only
        "smoothquant_compensated_layers": sorted(smoothed),
        "load": f"openvino_genai.AdapterConfig(openvino_genai.Adapter('{output.name}'), {GENAI_ALPHA})",
    }
    write_json(output.with_suffix(_SIDECAR), report)
    return report


def genai_adapters(ir_dir: str | os.PathLike) -> dict[str, Path]:
    """The GenAI adapter files ``export`` wrote beside the base IR, by name."""
    folder = Path(ir_dir) / GENAI_ADAPTER_DIR
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}


def resolve_adapter(spec: str | os.PathLike, ir_dir: str | os.PathLike, scratch: Path) -> tuple[str, Path]:
    """``NAME`` (an adapter exported beside the IR), a GenAI ``.safetensors`` file, or a PEFT folder (converted)."""
    spec = os.fspath(spec)
    exported = genai_adapters(ir_dir)
    if spec in exported:
        return spec, exported[spec]
    path = Path(spec)
    if path.is_file() and path.suffix == ".safetensors":
        if not path.with_suffix(_SIDECAR).is_file():
            logger.warning(
                "%s has no %s beside it: assuming its scalings are folded in (scalar %s)", path, _SIDECAR, GENAI_ALPHA
            )
        return path.stem, path
    if path.is_dir():
        from .adapters import check_adapter_matches
        from .models import model_skeleton

        check_adapter_matches(model_skeleton(os.fspath(ir_dir)), path)  # an adapter of another model: one line
        out = scratch / f"{path.name}.safetensors"
        write_genai_adapter(path, ir_dir, out)  # the IR folder holds the model's config.json
        return path.name, out
    names = ", ".join(exported) or "none"
    raise ShearsError(
        f"adapter {spec!r} is neither a PEFT adapter folder, a .safetensors file, nor an adapter exported "
        f"with the IR (exported: {names}); pass one of those"
    )


def check_genai_adapter(path: Path, layers: Mapping[str, dict], ir_dir: str | os.PathLike) -> None:
    """A GenAI adapter file must be whole and fit the IR: each lora_A / lora_B pair on a base MatMul of the IR
    (:func:`shears_nncf.ir.ir_layers`) with its shapes. GenAI itself would apply a file that matches nothing, silently,
    and stop on one of another model with a ``ParameterMismatch`` traceback."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # safetensors' own SafetensorError: a truncated or foreign file
        raise ShearsError(
            f"adapter file {path} cannot be read as safetensors ({first_line(e)}); it is truncated "
            "or not an adapter: export it again with --adapter-mode runtime"
        ) from None
    pairs: dict[str, dict[str, tuple]] = {}
    for key, shape in shapes.items():
        module, _, part = key.removeprefix("base_model.model.").partition(".lora_")
        if part[:1] in ("A", "B"):
            pairs.setdefault(module, {})[part[0]] = shape
    base = {name: layer["shape"] for name, layer in layers.items() if layer["role"] == "base"}
    if not pairs:
        raise ShearsError(f"adapter file {path} holds no lora_A / lora_B tensors; pass a LoRA adapter")
    unknown = sorted(m for m in pairs if m not in base)
    if unknown:
        raise ShearsError(
            f"adapter file {path}: {len(unknown)} of its {len(pairs)} layers ({unknown[0]}, ...) "
            f"match no layer of the IR {ir_dir}; pass an adapter made for this base IR"
        )
    for module, ab in sorted(pairs.items()):
        out_features, in_features = base[module]
        if set(ab) != {"A", "B"}:
            missing = "A" if "A" not in ab else "B"
            raise ShearsError(f"adapter file {path} lacks lora_{missing} of {module}; export it again")
        (rank, fan_in), (fan_out, rank_b) = ab["A"][-2:], ab["B"][-2:]
        if (fan_in, fan_out) != (in_features, out_features) or rank != rank_b:
            raise ShearsError(
                f"adapter file {path} was made for another model: {module} is "
                f"{in_features}->{out_features} in the IR {ir_dir} but {fan_in}->{fan_out} in the "
                "adapter; pass an adapter for this base"
            )


def emulate_runtime_lora(model, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add to ``model`` the branch GenAI's dynamic LoRA mode adds for ``tensors``; returns the inputs to feed it.

    ``LLMPipeline`` exposes neither its logits nor its performance counters, so measurements of what run-time LoRA
    does to accuracy and to the kernels rebuild its graph in plain OpenVINO (openvino.genai
    ``src/cpp/src/lora/adapter.cpp``, ``LoRASeparateTransform``): beside every MatMul an adapter tensor names,
    ``MatMul(x) + (MatMul(x, A^T) * alpha) @ B^T`` with ``x`` that MatMul's own input port 0 and A, alpha (1 here,
    per rank) and B run-time tensors (GenAI keeps them in state variables; here they are model inputs).
    """
    import openvino as ov
    import openvino.opset13 as ops

    from .ir import module_of

    pairs = {}
    for key, value in tensors.items():
        module, _, part = key.removeprefix("base_model.model.").partition(".lora_")
        pairs.setdefault(module, {})[part[0]] = value
    feeds, params = {}, []
    for op in model.get_ordered_ops():
        module = (
            (module_of(op.get_friendly_name()) or "").removesuffix(".base_layer")
            if op.get_type_name() == "MatMul"
            else None
        )
        if module not in pairs:
            continue
        ab = pairs.pop(module)
        a, b = ab["A"], ab["B"]
        name = module.replace(".", "_")
        pa = ops.parameter([-1, a.shape[1]], ov.Type.f32, name=f"{name}_A")
        palpha = ops.parameter([1, -1], ov.Type.f32, name=f"{name}_alpha")
        pb = ops.parameter([b.shape[0], -1], ov.Type.f32, name=f"{name}_B")
        x = op.input_value(0)
        down = ops.multiply(ops.matmul(x, pa, False, True), palpha)
        lora = ops.matmul(down, pb, False, True)
        consumers = list(op.output(0).get_target_inputs())
        add = ops.add(op.output(0), lora)
        for c in consumers:
            c.replace_source_output(add.output(0))
        for param in (pa, palpha, pb):
            param.output(0).get_tensor().set_names({param.get_friendly_name()})
        params += [pa, palpha, pb]
        feeds.update({f"{name}_A": a, f"{name}_alpha": np.ones((1, a.shape[0]), np.float32), f"{name}_B": b})
    if pairs:
        raise ShearsError(
            f"adapter tensors for {', '.join(sorted(pairs))} match no MatMul of the IR; pass the IR "
            "the adapter belongs to"
        )
    model.add_parameters(params)
    model.validate_nodes_and_infer_types()
    return feeds


# ------------------------------------------------------------------------------------------ pipeline


@dataclass
class Generation:
    """One greedy generation: the new token ids (and text), with GenAI's own timings."""

    tokens: list[int]
    text: Optional[str]
    ttft_ms: float
    tpot_ms: float
    seconds: float


@dataclass
class GenAIModel:
    """An ``LLMPipeline`` on one base IR with every adapter registered, one chosen per call (None = the base)."""

    pipe: Any
    adapters: dict[str, Any] = field(default_factory=dict)  # name -> openvino_genai.Adapter
    properties: dict[str, Any] = field(default_factory=dict)
    scratch: Any = None  # the temporary folder of adapters converted on the fly, removed with the model

    def adapter_config(self, name: Optional[str]):
        import openvino_genai as og

        if name is None:
            return og.AdapterConfig()  # no adapter: the base MatMuls alone
        if name not in self.adapters:
            raise ShearsError(f"adapter {name!r} is not loaded; choose one of {', '.join(self.adapters) or 'none'}")
        return og.AdapterConfig(self.adapters[name], GENAI_ALPHA)

    def generate_ids(
        self, ids: Sequence[int], max_new_tokens: int, adapter: Optional[str] = None, eos_token_id: Optional[int] = None
    ) -> Generation:
        """Greedy generation from token ids; stops at ``eos_token_id`` if given, else runs ``max_new_tokens``."""
        import openvino as ov
        import openvino_genai as og

        config = self.pipe.get_generation_config()
        config.max_new_tokens, config.do_sample, config.num_beams = max_new_tokens, False, 1
        if eos_token_id is None:
            config.min_new_tokens, config.ignore_eos = max_new_tokens, True
        else:
            config.eos_token_id, config.stop_token_ids = eos_token_id, {eos_token_id}
        arr = np.asarray([list(ids)], dtype=np.int64)
        inputs = og.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))
        start = time.perf_counter()
        result = self.pipe.generate(inputs, config, adapters=self.adapter_config(adapter))
        seconds = time.perf_counter() - start
        pm = result.perf_metrics
        return Generation(list(result.tokens[0]), None, pm.get_ttft().mean, pm.get_tpot().mean, seconds)

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int,
        adapter: Optional[str] = None,
        streamer: Optional[Callable[[str], Any]] = None,
        chat: bool = False,
        stop: Optional[Callable[[], bool]] = None,
    ) -> Generation:
        """Text in, text out with the IR's OpenVINO tokenizer (greedy); ``streamer`` gets each piece as it comes.

        ``stop()`` is asked after every token; True ends the generation there (GenAI's ``StreamingStatus.STOP``).
        """
        import openvino_genai as og

        config = self.pipe.get_generation_config()
        config.max_new_tokens, config.do_sample, config.num_beams = max_new_tokens, False, 1
        config.apply_chat_template = chat
        start = time.perf_counter()

        def stream(piece: str):
            if streamer is not None:
                streamer(piece)
            return og.StreamingStatus.STOP if stop is not None and stop() else og.StreamingStatus.RUNNING

        try:
            if streamer is None and stop is None:
                result = self.pipe.generate([prompt], config, adapters=self.adapter_config(adapter))
            else:
                result = self.pipe.generate([prompt], config, stream, adapters=self.adapter_config(adapter))
        except RuntimeError as e:  # e.g. GenAI's ParameterMismatch for an adapter of another model
            first = first_line(e, "no message")
            raise ShearsError(f"OpenVINO GenAI failed: {first}; check the adapter and the IR") from None
        seconds = time.perf_counter() - start
        pm = result.perf_metrics
        return Generation([], result.texts[0], pm.get_ttft().mean, pm.get_tpot().mean, seconds)


def load_pipeline(
    ir_dir: str | os.PathLike,
    adapters: Mapping[str, str | os.PathLike] | Sequence[str] = (),
    precision: Optional[str] = None,
    threads: Optional[int] = None,
    properties: Optional[dict[str, Any]] = None,
) -> GenAIModel:
    """An ``LLMPipeline`` on ``ir_dir`` compiled with its stored options, every adapter registered for switching.

    ``adapters`` are names of adapters exported beside the IR, GenAI ``.safetensors`` files or PEFT folders
    (converted for this IR into a temporary folder); a mapping gives them names. ``properties`` are passed to
    the pipeline on top (e.g. GenAI's ``ATTENTION_BACKEND``).
    """
    import tempfile

    from .ir import IR_NAME
    from .kernel_guard import check_first_inference
    from .runtime_options import ov_config

    try:
        import openvino_genai as og
    except ImportError:
        raise ShearsError(
            "openvino-genai is not installed; pip install openvino-genai (the version of openvino)"
        ) from None
    ir_dir = Path(ir_dir)
    if not (ir_dir / IR_NAME).is_file():
        raise ShearsError(f"{ir_dir} has no {IR_NAME}; pass an IR folder written by 'shears-nncf export'")
    report = (
        read_json(ir_dir / REPORT_FILES["export"], "export report")
        if (ir_dir / REPORT_FILES["export"]).is_file()
        else {}
    )
    # the CPU plugin's options (as bench compiles them, so one probe serves both); GenAI's own come on top
    plugin = {
        "PERFORMANCE_HINT": "LATENCY",
        **ov_config(ir_dir, precision),
        **({"INFERENCE_NUM_THREADS": threads} if threads else {}),
    }
    check_first_inference(ir_dir, plugin)
    props = {**plugin, **(properties or {})}
    if report.get("lora_matmuls") and adapters:
        logger.warning("%s already holds an adapter in its MatMuls; runtime adapters are added on top of it", ir_dir)
    scratch = tempfile.TemporaryDirectory(prefix="shears-genai-")
    try:
        return _load(og, ir_dir, adapters, props, scratch, report)
    except BaseException:
        scratch.cleanup()  # a refusal leaves no temporary folder behind
        raise


def _load(og, ir_dir: Path, adapters, props: dict, scratch, report: dict) -> GenAIModel:
    import openvino as ov

    from .ir import IR_NAME, ir_layers

    items = adapters.items() if isinstance(adapters, Mapping) else [(None, a) for a in adapters]
    loaded: dict[str, Any] = {}
    layers = ir_layers(ov.Core().read_model(ir_dir / IR_NAME)) if items else {}
    for name, spec in items:
        default_name, path = resolve_adapter(spec, ir_dir, Path(scratch.name))
        check_genai_adapter(path, layers, ir_dir)
        try:
            loaded[name or default_name] = og.Adapter(str(path))
        except RuntimeError as e:
            first = first_line(e, "unreadable")
            raise ShearsError(
                f"OpenVINO GenAI cannot read adapter {path}: {first}; write it with 'shears-nncf export "
                "--adapter-mode runtime'"
            ) from None
    config = og.AdapterConfig()
    for adapter in loaded.values():
        config.add(adapter, GENAI_ALPHA)
    kwargs = {"adapters": config} if loaded else {}
    if "scheduler_config" not in props and props.get("ATTENTION_BACKEND", "PA") == "PA":  # SDPA has no such cache
        # GenAI's paged-attention prefix cache (on by default in LLMPipeline on CPU) is not keyed by the adapter: a
        # prompt seen with one adapter reuses that adapter's KV blocks under another, or under none
        # (benchmarks/repro/genai_prefix_cache_adapter.py reproduces it). It also makes a benchmark that repeats its
        # prompt time a cache hit instead of a prefill. So it is off unless the caller passes a scheduler_config.
        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        kwargs["scheduler_config"] = scheduler
    try:
        pipe = og.LLMPipeline(str(ir_dir), "CPU", **kwargs, **props)
    except RuntimeError as e:
        first = first_line(e, "failed")
        raise ShearsError(
            f"OpenVINO GenAI cannot load {ir_dir} with {sorted(props)}: {first}; check the pipeline "
            "properties, or export the IR again with this version"
        ) from None
    logger.info("GenAI pipeline on %s with %d adapter(s) %s, %s", ir_dir, len(loaded), ", ".join(loaded), props)
    return GenAIModel(pipe, loaded, props, scratch)


def generate(
    ir_dir: str | os.PathLike,
    prompts: Sequence[str],
    adapters: Sequence[Optional[str]] = (None,),
    max_new_tokens: int = 128,
    chat: bool = False,
    precision: Optional[str] = None,
    threads: Optional[int] = None,
    on_start: Optional[Callable[[Optional[str], str], Any]] = None,
    streamer: Optional[Callable[[str], Any]] = None,
    on_end: Optional[Callable[[dict], Any]] = None,
) -> list[dict[str, Any]]:
    """Generate every prompt with every adapter (None = the base model) on one pipeline, switching per call.

    ``on_start(adapter, prompt)`` is called before each generation, ``streamer`` with each piece of text, and
    ``on_end(result)`` after it.
    """
    from .config import BenchConfig
    from .ir import IR_NAME
    from .options import check_value

    check_value(BenchConfig, "threads", threads)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ShearsError(f"--max-new-tokens must be a positive integer, got {max_new_tokens}")
    ir_dir = Path(ir_dir)
    if not (ir_dir / IR_NAME).is_file():
        raise ShearsError(f"{ir_dir} has no {IR_NAME}; pass an IR folder written by 'shears-nncf export'")
    for part in ("tokenizer", "detokenizer"):  # GenAI aborts the process without them: check before it loads
        if not (ir_dir / f"openvino_{part}.xml").is_file():
            raise ShearsError(
                f"{ir_dir} has no openvino_{part}.xml (needed for text in, text out); export the IR "
                "again with openvino-tokenizers installed"
            )
    budgets = _token_budgets(ir_dir, prompts, max_new_tokens, chat)
    specs = {a: a for a in adapters if a is not None}
    model = load_pipeline(ir_dir, specs, precision, threads)
    out = []
    with _sigint_stops() as interrupted, model.scratch or contextlib.nullcontext():
        for prompt, budget in zip(prompts, budgets):
            for adapter in adapters:
                if on_start is not None:
                    on_start(adapter, prompt)
                g = _beside_main_thread(
                    lambda: model.generate_text(prompt, budget, adapter, streamer, chat, stop=interrupted.is_set)
                )
                if interrupted.is_set():
                    raise KeyboardInterrupt
                out.append(
                    {
                        "adapter": adapter,
                        "prompt": prompt,
                        "text": g.text,
                        "ttft_ms": round(g.ttft_ms, 2),
                        "tpot_ms": round(g.tpot_ms, 2),
                        "seconds": round(g.seconds, 3),
                    }
                )
                if on_end is not None:
                    on_end(out[-1])
    return out


def _token_budgets(ir_dir: Path, prompts: Sequence[str], max_new_tokens: int, chat: bool) -> list[int]:
    """New tokens per prompt: ``max_new_tokens``, capped where the prompt and its answer would pass the model's context;
    a prompt that fills the context alone is refused."""
    import openvino_genai as og

    config = read_json(ir_dir / "config.json", "model config") if (ir_dir / "config.json").is_file() else {}
    context = config.get("max_position_embeddings")
    if not isinstance(context, int):
        return [max_new_tokens] * len(prompts)
    tokenizer = og.Tokenizer(str(ir_dir))
    budgets = []
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True) if chat else prompt
        n = int(tokenizer.encode(text).input_ids.get_shape()[-1])
        if n >= context:
            raise ShearsError(f"the prompt is {n} tokens, and the model's context is {context} positions; shorten it")
        if n + max_new_tokens > context:
            logger.warning(
                "--max-new-tokens %d capped at %d: the prompt's %d tokens and the answer fill the model's %d positions",
                max_new_tokens,
                context - n,
                n,
                context,
            )
        budgets.append(min(max_new_tokens, context - n))
    return budgets


def _beside_main_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a worker thread while the main thread waits in Python, where signal handlers run: a Ctrl-C during
    GenAI's C++ generation loop is then handled at once (:func:`_sigint_stops`), not when the loop ends."""
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=work, name="shears-genai-generate", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
    if "error" in box:
        raise box["error"]
    return box["value"]


@contextlib.contextmanager
def _sigint_stops():
    """While generating, Ctrl-C sets the event the streamer reads (GenAI then stops at the next token) instead of
    raising inside GenAI's C++ loop, which cannot be interrupted."""
    import signal
    import threading

    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)
