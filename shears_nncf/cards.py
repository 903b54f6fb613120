"""Model cards: a ``README.md`` with Hugging Face model-card metadata in every folder a stage writes for users.

Each card says what the folder is (base model, licence, sparsity method and level, the adapter's ranks and
training data), the prompt the model expects with a working example, how to load it with the stock tools
(transformers + PEFT, optimum-intel, OpenVINO GenAI, ``benchmark_app``, lm-evaluation-harness) and the traps
(``merge_and_unload`` fills the pruned zeros; the PEFT adapter file is not a GenAI file). The snippets name the
folders by absolute path, so they run from any working directory; ``tests/test_cards.py`` runs them.

Prompt convention: the adapters are trained on plain prompts (LLM-Adapters' template, or ``Question: ...
Answer:``), never through a chat template, so every snippet here and ``shears-nncf generate`` pass the prompt as
is (GenAI: ``apply_chat_template=False``, as its default would wrap it).

The metadata is written by ``huggingface_hub``'s own :class:`~huggingface_hub.ModelCardData`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from .io import final_path, read_json
from .reports import REPORT_FILES

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
#: the tag every Shears artefact carries
TAGS = ["shears", "sparse", "nncf"]
_MAX_NEW_TOKENS = 32
#: benchmark_app's input for a stateful LLM IR's beam_idx (its random filling would index beams that do not exist)
BEAM_IDX_FILE = "benchmark_app_beam_idx.npy"

MERGE_TRAP = (
    "`merge_and_unload()` adds the dense update B·A to every adapted weight and so **fills the pruned "
    "zeros** (a 50% sparse `q_proj` comes out 0% sparse): keep the adapter unmerged, or train it with "
    "`--sparse-adapter` and merge with `shears-nncf merge`."
)
GENAI_FILE_TRAP = (
    "The PEFT file `adapter_model.safetensors` is **not** an OpenVINO GenAI adapter: GenAI ignores "
    "`adapter_config.json` (per-layer ranks and alphas) and the W8A8 IR's SmoothQuant scaling, so it "
    "gives wrong output without an error. Use the file `shears-nncf export --adapter-mode runtime` "
    "writes to `genai_adapters/`, or pass this folder to `shears-nncf generate --adapter`."
)


# ------------------------------------------------------------------------------------------- lineage


def _card_data(folder: Path) -> dict:
    card = folder / CARD_NAME
    if not card.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card).data.to_dict()
    except Exception:  # a hand-written README without metadata: nothing to inherit
        return {}


def origin(model: str | os.PathLike) -> dict[str, Optional[str]]:
    """The model a folder descends from, as a card names it: ``{"base_model": hub id or path, "license": ...}``.

    A built-in name is its source's hub id; a folder written by a stage inherits its card's metadata (a sparse
    model names the model it was pruned from); a hub id takes the licence of its cached card where there is one.
    """
    from .models import BUILTIN_ORIGINS, is_hub_id

    name = os.fspath(model)
    if name in BUILTIN_ORIGINS:
        hub_id, licence = BUILTIN_ORIGINS[name]
        return {"base_model": hub_id, "license": licence}
    folder = Path(name)
    if folder.is_dir():
        data = _card_data(folder)
        licence = data.get("license") if data.get("license") != "other" else None  # "other": what we write for unknown
        return {"base_model": data.get("base_model") or str(folder.resolve()), "license": licence}
    licence = None
    if is_hub_id(name):
        from huggingface_hub import ModelCard

        try:
            licence = ModelCard.load(name).data.license
        except Exception:  # not in the cache and offline, or no card: the licence stays unknown
            licence = None
    return {"base_model": name, "license": licence}


def _sparsity(model_dir: Path) -> Optional[dict]:
    path = Path(model_dir) / REPORT_FILES["prune"]
    return read_json(path, "sparsity report") if path.is_file() else None


def _sparsity_line(report: Optional[dict]) -> str:
    if not report:
        return "dense (no sparsity report beside the model)"
    profile = (report.get("layer_sparsity") or {}).get("profile", "uniform")
    calib = (report.get("calibration") or {}).get("source")
    return (
        f"{report['method']} {report['pattern']}, sparsity level {report['sparsity_level']:g} ({profile} profile): "
        f"{100 * report['sparsity']:.2f}% of the weights of {len(report.get('modules', {}))} decoder projections "
        f"are zero" + (f"; calibrated on {calib}" if calib else "")
    )


# ------------------------------------------------------------------------------------------- writing


def _write(folder: Path, data: dict, title: str, sections: list[tuple[str, str]]) -> Path:
    from huggingface_hub import ModelCardData

    meta = ModelCardData(**{k: v for k, v in data.items() if v is not None}).to_yaml()
    body = "\n\n".join(f"## {head}\n\n{text.strip()}" for head, text in sections)
    path = Path(folder) / CARD_NAME
    path.write_text(f"---\n{meta}\n---\n\n# {title}\n\n{body}\n")
    return path


def _meta(base: dict, library: str, extra_tags: list[str]) -> dict:
    return {
        "base_model": base["base_model"],
        "license": base["license"] or "other",
        "library_name": library,
        "tags": TAGS + extra_tags,
        "pipeline_tag": "text-generation",
    }


def _licence_line(base: dict) -> str:
    return (
        f"{base['license']}, as the base model"
        if base["license"]
        else "unknown: the base model's licence applies; check it before you share this model"
    )


def _py(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


def _transformers_snippet(folder: str, prompt: str) -> str:
    return _py(f"""
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained({folder!r})   # the zeros are plain zeros in the weights
tokenizer = AutoTokenizer.from_pretrained({folder!r})
ids = tokenizer({prompt!r}, return_tensors="pt")
out = model.generate(**ids, max_new_tokens={_MAX_NEW_TOKENS}, do_sample=False)
print(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
""")


def write_sparse_card(folder: str | os.PathLike, model: str | os.PathLike, report: dict) -> Path:
    """The card of a pruned model folder (``prune``): its origin, the sparsity, how to load and tune it."""
    folder = Path(folder)
    base = origin(model)
    final = os.fspath(final_path(folder))
    prompt = "The capital of France is"
    return _write(
        folder,
        _meta(base, "transformers", ["wanda" if report["method"] == "wanda" else report["method"]]),
        f"{Path(base['base_model']).name}, {100 * report['sparsity']:.0f}% sparse",
        [
            (
                "Model",
                f"- base model: `{base['base_model']}`\n- licence: {_licence_line(base)}\n"
                f"- sparsity: {_sparsity_line(report)}\n- made by `shears-nncf prune` (Shears, NAACL 2024); "
                f"`{REPORT_FILES['prune']}` has every layer's zero fraction",
            ),
            (
                "Prompt",
                "The base model's own: a plain text prompt (or its chat template, if it is an instruct model). "
                "Sparsity alone costs accuracy; tune an adapter with `shears-nncf train` to recover it.",
            ),
            ("Load with transformers", _transformers_snippet(final, prompt)),
            (
                "Traps",
                "Fine-tuning the dense weights refills the zeros; tune a LoRA adapter instead and keep it unmerged "
                "(" + MERGE_TRAP + ")",
            ),
        ],
    )


def _adapter_summary(adapter_cfg: dict) -> str:
    ranks = adapter_cfg.get("rank_pattern") or {}
    counts = Counter(ranks.values()) if ranks else Counter({adapter_cfg.get("r"): 1})
    per_rank = ", ".join(f"rank {r}: {n} layer(s)" for r, n in sorted(counts.items(), reverse=True))
    targets = adapter_cfg.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    return f"LoRA on {targets}; {per_rank}; lora_alpha {adapter_cfg.get('lora_alpha')} (alpha / r per layer)"


def _example(super_adapter: Optional[Path]) -> tuple[str, str, str]:
    """(template description, an example prompt, its expected answer), from the super-adapter's validation records."""
    from .datasets import PROMPT_NO_INPUT, format_prompt, load_validation

    training = {}
    if super_adapter is not None and (super_adapter / REPORT_FILES["train"]).is_file():
        training = read_json(super_adapter / REPORT_FILES["train"], "training report").get("data") or {}
    records = []
    if super_adapter is not None:
        try:
            records = load_validation(super_adapter)
        except Exception:  # no validation split (a super-adapter from elsewhere): the template alone
            records = []
    if training.get("response_format") == "answer-text":
        template = "`Question: {question}\\nAnswer:` and the answer's text (lm-eval's multiple-choice form)"
    else:
        template = (
            "LLM-Adapters' (Alpaca) template:\n\n```text\n"
            + PROMPT_NO_INPUT.format(instruction="{instruction}", output="")
            + "\n```"
        )
    if records:
        return template, format_prompt(records[0], with_output=False), str(records[0].get("output", ""))
    return template, PROMPT_NO_INPUT.format(instruction="Is the sky blue? Answer format: true/false", output=""), ""


def write_adapter_card(
    folder: str | os.PathLike,
    model: str | os.PathLike,
    super_adapter: Optional[str | os.PathLike],
    report: Optional[dict] = None,
) -> Path:
    """The card of a sub-adapter folder (``search``): base, ranks, training data, prompt, PEFT / GenAI loading."""
    from .adapters import MARKER_NAME

    folder = Path(folder)
    final = final_path(folder)
    adapter_cfg = read_json(folder / "adapter_config.json", "adapter config")
    base_path = adapter_cfg.get("base_model_name_or_path") or os.fspath(model)
    base = origin(model)
    masked = (folder / MARKER_NAME).is_file()
    sup = Path(super_adapter) if super_adapter is not None else None
    training = (
        read_json(sup / REPORT_FILES["train"], "training report")
        if sup and (sup / REPORT_FILES["train"]).is_file()
        else {}
    )
    data = (training.get("data") or {}).get("sources") or ["(not recorded)"]
    template, prompt, answer = _example(sup)
    chosen = (report or {}).get("chosen") or {}
    peft = _py(f"""
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained({os.fspath(final)!r})   # loads its base: {base_path}
tokenizer = AutoTokenizer.from_pretrained(model.peft_config["default"].base_model_name_or_path)
prompt = {prompt!r}
ids = tokenizer(prompt, return_tensors="pt")
out = model.generate(**ids, max_new_tokens={_MAX_NEW_TOKENS}, do_sample=False)
print(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
""")
    loading = [("Load with transformers + PEFT", peft)]
    if masked:
        loading = [
            (
                "Load (sparsity-masked adapter)",
                f"Trained with the update masked by the zeros ({MARKER_NAME}): "
                "stock PEFT would apply it unmasked. Merge it (`shears-nncf merge --model BASE --adapter "
                "THIS --output MERGED`, a plain sparse model) or load it with "
                "`shears_nncf.adapters.load_adapter(model, path)`.",
            )
        ]
    return _write(
        folder,
        _meta(
            {**base, "base_model": base["base_model"]},
            "peft",
            ["lora", "nls", "base_model:adapter:" + base["base_model"]],
        ),
        f"Shears sub-adapter for {Path(base['base_model']).name}",
        [
            (
                "Adapter",
                f"- base (the sparse model it runs on): `{base_path}`\n- original model: `{base['base_model']}`\n"
                f"- licence: {_licence_line(base)}\n- {_adapter_summary(adapter_cfg)}\n"
                f"- chosen by `shears-nncf search` ({(report or {}).get('strategy', '?')}, score "
                f"{chosen.get('score', '?')}, {chosen.get('adapter_params', '?')} parameters)\n"
                f"- training data: {', '.join(map(str, data))}",
            ),
            (
                "Prompt",
                f"No chat template: the adapter was trained on {template}\n\nExample prompt (expected answer: "
                f"`{answer}`):\n\n```text\n{prompt}\n```",
            ),
            *loading,
            (
                "OpenVINO",
                "Export it (`shears-nncf export --model BASE --adapter THIS --output IR`, or "
                "`--adapter-mode runtime` for an OpenVINO GenAI adapter file) and follow the IR folder's card.",
            ),
            ("Traps", f"- {MERGE_TRAP}\n- {GENAI_FILE_TRAP}"),
        ],
    )


def write_merged_card(
    folder: str | os.PathLike, model: str | os.PathLike, adapter: str | os.PathLike, report: dict
) -> Path:
    """The card of a merged model folder (``merge``): a plain sparse model, every zero kept."""
    folder = Path(folder)
    base = origin(model)
    final = os.fspath(final_path(folder))
    sparsity = _sparsity(Path(model))
    _, prompt, _ = _example(_super_of(Path(adapter)))
    return _write(
        folder,
        _meta(base, "transformers", ["sqft", "merged"]),
        f"{Path(base['base_model']).name}, sparse, adapter merged",
        [
            (
                "Model",
                f"- original model: `{base['base_model']}`\n- licence: {_licence_line(base)}\n"
                f"- sparse base: `{Path(model).resolve()}` ({_sparsity_line(sparsity)})\n"
                f"- merged: the sparsity-masked adapter `{Path(adapter).resolve()}` into {report['merged_layers']} "
                f"layers, all {report['zeros_kept']} pruned zeros kept (`shears-nncf merge`)",
            ),
            ("Prompt", f"No chat template; the adapter's prompt form, e.g.:\n\n```text\n{prompt}\n```"),
            ("Load with transformers", _transformers_snippet(final, prompt)),
            ("Traps", "Training this model further (full fine-tuning or a merged plain LoRA) fills its zeros."),
        ],
    )


def _super_of(adapter: Path) -> Optional[Path]:
    """The super-adapter a sub-adapter was extracted from (its search report names it), if it is still there."""
    path = adapter / REPORT_FILES["search"]
    source = read_json(path, "search report").get("super_adapter") if path.is_file() else None
    return Path(source) if source and Path(source).is_dir() else None


def write_ir_card(
    folder: str | os.PathLike, report: dict, options: dict[str, Any], final: Optional[str | os.PathLike] = None
) -> Path:
    """The card of an IR folder (``export``): what it holds and how each stock OpenVINO tool loads it right.

    ``report`` is the export report, ``options`` the compile options written to ``ov_config.json``; ``final`` is
    where the folder will live (default: the output of the scratch folder ``folder``), for the snippets' paths.
    """
    from .genai import GENAI_ADAPTER_DIR

    folder = Path(folder)
    ir = os.fspath(Path(final).resolve() if final else final_path(folder))
    base = origin(report["model"])
    sparsity = _sparsity(Path(report["model"]))
    runtime = bool(report.get("genai_adapters"))
    adapter = report.get("adapter")
    prompt_src = _super_of(Path(adapter)) if adapter else None
    if runtime:
        prompt_src = _super_of(Path(report["adapters"][0]))
    _, prompt, _ = _example(prompt_src) if (adapter or runtime) else ("", "The capital of France is", "")
    config = report.get("config") or {}
    if runtime:
        what = (
            f"the sparse base model alone (`--adapter-mode runtime`); its sub-adapters are OpenVINO GenAI files in "
            f"`{GENAI_ADAPTER_DIR}/`: {', '.join(report['genai_adapters'])}"
        )
    elif config.get("merge"):
        what = f"the sparse model with the sparsity-masked adapter `{adapter}` merged in (no LoRA MatMuls)"
    elif adapter:
        what = f"the sparse model with the adapter `{adapter}` as {report['lora_matmuls']} unmerged LoRA MatMuls"
    else:
        what = "the sparse model, no adapter"
    ov_cfg = f"{ir}/ov_config.json"
    import numpy as np

    np.save(folder / BEAM_IDX_FILE, np.zeros(1, np.int32))  # numpy's own format: no pickle
    optimum = _py(f"""
import json
from optimum.intel import OVModelForCausalLM
from transformers import AutoTokenizer

model = OVModelForCausalLM.from_pretrained({ir!r}, ov_config=json.load(open({ov_cfg!r})))
tokenizer = AutoTokenizer.from_pretrained({ir!r})
ids = tokenizer({prompt!r}, return_tensors="pt")
out = model.generate(**ids, max_new_tokens={_MAX_NEW_TOKENS}, do_sample=False)
print(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
""")
    first = next(iter(report.get("genai_adapters") or {}), None)
    adapter_line = (
        f"adapter = og.Adapter({ir + '/' + GENAI_ADAPTER_DIR + '/' + first + '.safetensors'!r})\n"
        "adapters = og.AdapterConfig(adapter, 1.0)   # scalings are folded into the file: alpha 1.0\n"
        if first
        else "adapters = og.AdapterConfig()   # the adapter is inside the IR\n"
    )
    genai = _py(f"""
import json
import openvino_genai as og

{adapter_line}no_prefix_cache = og.SchedulerConfig()
no_prefix_cache.enable_prefix_caching = False   # GenAI's prefix cache is not keyed by the adapter
pipe = og.LLMPipeline({ir!r}, "CPU", adapters=adapters, scheduler_config=no_prefix_cache,
                      **json.load(open({ov_cfg!r})))
print(pipe.generate({prompt!r}, max_new_tokens={_MAX_NEW_TOKENS}, adapters=adapters, apply_chat_template=False))
""")
    sections = [
        (
            "Model",
            f"- original model: `{base['base_model']}`\n- licence: {_licence_line(base)}\n"
            f"- holds: {what}\n- sparsity: {_sparsity_line(sparsity)}\n"
            f"- precision: {report['precision']}; {report['sparse_kernel_layers']} pruned layers can use "
            f"OpenVINO's sparse int8 kernel (AMX CPUs)\n"
            f"- compile options (`ov_config.json`): `{json.dumps(options)}`"
            f"\n- made by `shears-nncf export`; `{REPORT_FILES['export']}` has every layer",
        ),
        (
            "Prompt",
            "No chat template (GenAI applies one by default: pass `apply_chat_template=False`, as "
            f"`shears-nncf generate` does). Example:\n\n```text\n{prompt}\n```",
        ),
    ]
    if runtime:
        sections.append(
            (
                "Load with optimum-intel",
                "Not for this folder: `OVModelForCausalLM` would run the base "
                "model without its adapter (it cannot apply GenAI adapter files). Use OpenVINO GenAI.",
            )
        )
    else:
        sections.append(
            (
                "Load with optimum-intel",
                "Pass the stored compile options (neither optimum-intel nor "
                "OpenVINO applies the sparse rate or the precision stored in the IR by itself):\n\n" + optimum,
            )
        )
    sections += [
        ("Load with OpenVINO GenAI", genai),
        (
            "Benchmark",
            "```bash\n"
            f"benchmark_app -m {ir}/openvino_model.xml -d CPU -hint latency -data_shape "
            "input_ids[1,32],attention_mask[1,32],position_ids[1,32],beam_idx[1] "
            f"-i beam_idx:{ir}/{BEAM_IDX_FILE} -load_config {ir}/benchmark_app_config.json\n```\n"
            '`benchmark_app_config.json` holds the same options per device (`{"CPU": {...}}`), the '
            f"form `-load_config` reads; `{BEAM_IDX_FILE}` is a zero `beam_idx` (random values would name "
            "beams that do not exist)." + (" It times the base MatMuls only." if runtime else ""),
        ),
        (
            "Evaluate with lm-evaluation-harness",
            "```bash\n"
            "lm_eval --model openvino --model_args "
            f"pretrained={ir},ov_config={ov_cfg} --include_path "
            '$(python -c "import shears_nncf.lm_eval_tasks as t; print(t.TASK_DIR)") '
            "--tasks shears_arc_easy\n```\n"
            "The task files read the LLM-Adapters test sets from `$SHEARS_NNCF_DATA` and score them as "
            "`shears-nncf eval --scoring likelihood` (docs/deploy.md)."
            + (" For this base-only IR it scores the base model." if runtime else ""),
        ),
        ("Traps", f"- {GENAI_FILE_TRAP}"),
    ]
    tags = ["openvino", "quantize-" + report["quantize"]] + (["lora"] if adapter or runtime else [])
    return _write(
        folder, _meta(base, "openvino", tags), f"{Path(base['base_model']).name}, sparse, OpenVINO IR", sections
    )
