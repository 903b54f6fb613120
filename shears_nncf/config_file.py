"""The NNCF-style JSON config file: its schema (derived from :mod:`shears_nncf.config`), reading and writing.

A config has one section per pipeline stage, each optional, so that a stage's CLI can take a config that only
describes that stage; the three original Shears configs (``bootstrapNAS`` with ``width.overwrite_groups``) load
unchanged. :func:`to_dict` writes what :func:`from_dict` reads back to an equal :class:`ShearsConfig`, so the
configuration a run used can be saved beside its outputs and run again.

.. code-block:: json

    {
      "model": "smollm2-135m",
      "compression": [{"algorithm": "wanda", "sparsity_level": 0.5}],
      "bootstrapNAS": {"training": {"algorithm": "nls",
                        "lora": {"lora_alpha": 64,
                                 "target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]},
                        "elasticity": {"available_elasticity_dims": ["lora_rank"],
                                       "lora_rank": {"groups": [["q_proj", "k_proj", "v_proj"], ["up_proj"],
                                                                ["down_proj"]],
                                                     "widths": [32, 24, 16]}}},
                       "search": {"strategy": "heuristic", "eval": "loss"}},
      "training": {"data": ["gsm8k/train.jsonl"], "learning_rate": 3e-4, "batch_size": 16},
      "export": {"quantize": "w8a8"},
      "eval": {"tasks": ["gsm8k"], "limit": 100}
    }
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import jsonschema

from .config import (
    SECTIONS,
    AdvancedExportConfig,
    ElasticityConfig,
    ExportConfig,
    LoraSettings,
    NLSConfig,
    PruningConfig,
    SearchConfig,
    ShearsConfig,
    TrainingConfig,
)
from .errors import ShearsError
from .io import data_root, read_json, write_json
from .options import POSITIVE_INT, STRINGS, enum, phrase, section_schema, unreasonable_number

#: what a file says ("algorithm") for what a section calls otherwise ("method")
_COMPRESSION = section_schema(PruningConfig, rename={"method": "algorithm"}, required=("algorithm",))
_RANK_LISTS = {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": POSITIVE_INT}}
_GROUPS = ElasticityConfig.__dataclass_fields__["groups"].metadata["schema"]

_ELASTICITY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "available_elasticity_dims": {"type": "array", "items": enum(("lora_rank", "width"))},
        # this package's format: module names (or regexes) per group, one rank list for all groups or one per group
        "lora_rank": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups", "widths"],
            "properties": {
                "groups": _GROUPS,
                "widths": {"oneOf": [{"type": "array", "minItems": 1, "items": POSITIVE_INT}, _RANK_LISTS]},
            },
        },
        # the original Shears / BootstrapNAS format: NNCF node-name patterns
        "width": {
            "type": "object",
            "additionalProperties": False,
            "required": ["overwrite_groups", "overwrite_groups_widths"],
            "properties": {
                "overwrite_groups": _GROUPS,
                "overwrite_groups_widths": _RANK_LISTS,
                "min_width": POSITIVE_INT,
                "max_num_widths": POSITIVE_INT,
                "width_step": POSITIVE_INT,
            },
        },
    },
}

#: keys of BootstrapNAS configs that mean nothing for LoRA-rank NLS: accepted so that those configs load unchanged
_BOOTSTRAPNAS_ONLY = {
    "frozen_layers_allowed": {"type": "boolean"},
    "progressivity_of_elasticity": STRINGS,
    "batchnorm_adaptation": {"type": "object"},
    "schedule": {"type": "object"},
    "lr_schedule": {"type": "object"},
}

_NLS = section_schema(
    NLSConfig,
    extra={
        "algorithm": enum(("nls", "progressive_shrinking")),
        "lora": section_schema(LoraSettings),
        "elasticity": _ELASTICITY,
        **_BOOTSTRAPNAS_ONLY,
    },
)

_SEARCH = section_schema(SearchConfig, extra={"algorithm": {"type": "string"}, "num_evals": POSITIVE_INT})

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
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "sample_size": {"type": "array", "items": {"type": "integer"}},
                            "type": {"type": "string"},
                            "keyword": {"type": "string"},
                            "filler": {"type": "string"},
                        },
                    },
                },
            ]
        },
        "compression": {"oneOf": [_COMPRESSION, {"type": "array", "maxItems": 1, "items": _COMPRESSION}]},
        "bootstrapNAS": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"training": _NLS, "search": _SEARCH},
        },
        **{key: section_schema(cls) for key, cls in SECTIONS.items()},
        # NNCF-style: the expert settings in a block of their own
        "export": section_schema(ExportConfig, extra={"advanced": section_schema(AdvancedExportConfig)}),
        # a single data file may be given as a string
        "training": section_schema(TrainingConfig, extra={"data": {"oneOf": [{"type": "string"}, STRINGS]}}),
    },
}


#: the NLS settings a config's bootstrapNAS.training holds as they are
_NLS_KEYS = ("sampling", "sample_every", "sparse_adapter", "base_model_id")


def _path_of(error: jsonschema.ValidationError) -> str:
    out = ""
    for p in error.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """The most specific schema error as one line naming the key, what it must be and what it is."""
    while error.context:  # oneOf / anyOf: report the branch that got furthest
        error = max(error.context, key=lambda e: (e.validator not in ("type", "const"), len(list(e.absolute_path))))
    where = _path_of(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"unknown key {', '.join(repr(k) for k in extra)} in {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "required":
        return f"{where} is missing a required key: {error.message.split(' ')[0]}"
    if error.validator in (
        "enum",
        "const",
        "type",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "minItems",
        "maxItems",
        "pattern",
    ):
        return f"{where} must be {phrase(error.schema)}, got {error.instance!r}"
    return f"{where}: {error.message}"


#: how deep a config's objects and lists may nest (the deepest real one: 6)
MAX_DEPTH = 32


def _check_values(raw: Any, source: str) -> None:
    """No NaN, infinity or absurd integer anywhere (the schema's bounds let NaN through), no absurd nesting."""
    stack = [(raw, "", 0)]
    while stack:  # iterative: a deeply nested file must not exhaust the recursion limit here
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ShearsError(f"invalid {source}: it nests deeper than {MAX_DEPTH} levels (at {where}); fix the file")
        why = unreasonable_number(value)
        if why:
            raise ShearsError(f"invalid {source}: {where or '<top level>'} {why}; give a number")
        if isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]


def validate(raw: Any, source: str = "config") -> None:
    """Check a parsed config against :data:`SCHEMA`; raise :class:`ShearsError` with one readable line."""
    _check_values(raw, source)
    errors = sorted(
        jsonschema.Draft202012Validator(SCHEMA).iter_errors(raw),
        key=lambda e: (len(list(e.absolute_path)), str(e.message)),
    )
    if errors:
        raise ShearsError(f"invalid {source}: {_describe(errors[-1])}")


def _elasticity(training: dict) -> ElasticityConfig:
    el = training.get("elasticity") or {}
    if "lora_rank" in el:
        lr = el["lora_rank"]
        ranks = lr["widths"]
        per_group = ranks if isinstance(ranks[0], list) else [list(ranks) for _ in lr["groups"]]
        return ElasticityConfig(groups=[list(g) for g in lr["groups"]], ranks=per_group)
    if "width" in el:
        w = el["width"]
        return ElasticityConfig(
            groups=[list(g) for g in w["overwrite_groups"]], ranks=[list(x) for x in w["overwrite_groups_widths"]]
        )
    if el.get("available_elasticity_dims"):
        raise ShearsError(
            f"elasticity dims {el['available_elasticity_dims']} are listed but no 'lora_rank' (or 'width') "
            "section defines the groups and widths"
        )
    raise ShearsError(
        "bootstrapNAS.training has no elasticity section; add elasticity.lora_rank with groups and widths"
    )


def _section(cls, raw: Optional[dict], drop: tuple = ()) -> Any:
    return cls(**{k: v for k, v in (raw or {}).items() if k not in drop})


def from_dict(raw: dict, source: str = "config") -> ShearsConfig:
    """Validate a parsed config and build the typed :class:`ShearsConfig`."""
    if isinstance(raw, dict) and "trust_remote_code" in raw:
        # a file must never switch on code execution: only the command-line flag or an explicit API argument can
        raise ShearsError(
            f"{source} sets trust_remote_code, which is honoured only from the command line; remove the key "
            "and pass --trust-remote-code if you trust the model folder's code"
        )
    validate(raw, source)
    comp = raw.get("compression")
    if isinstance(comp, list):
        comp = comp[0] if comp else None
    compression = None
    if comp is not None:
        comp = dict(comp)
        comp["method"] = comp.pop("algorithm")
        compression = PruningConfig(**comp)
    nas = raw.get("bootstrapNAS") or {}
    nls = None
    if (training := nas.get("training")) is not None:
        nls = NLSConfig(
            elasticity=_elasticity(training),
            lora=LoraSettings(**training.get("lora", {})),
            **{k: training[k] for k in _NLS_KEYS if k in training},
        )
    search = dict(nas.get("search") or {})
    if "num_evals" in search:
        search.setdefault("budget", search.pop("num_evals"))
    return ShearsConfig(
        model=raw.get("model"),
        output=raw.get("output"),
        input_info=raw.get("input_info"),
        compression=compression,
        nls=nls,
        search=_section(SearchConfig, search, drop=("algorithm",)),
        **{key: _section(cls, raw.get(key)) for key, cls in SECTIONS.items()},
    )


def to_dict(cfg: ShearsConfig) -> dict:
    """The NNCF-style dict of ``cfg``, every setting written out: :func:`from_dict` reads it back to an equal config."""
    out: dict[str, Any] = {k: getattr(cfg, k) for k in ("model", "output", "input_info") if getattr(cfg, k) is not None}
    if cfg.compression is not None:
        comp = dataclasses.asdict(cfg.compression)
        out["compression"] = {"algorithm": comp.pop("method"), **comp}
    nas: dict[str, Any] = {}
    if cfg.nls is not None:
        nls = cfg.nls
        nas["training"] = {
            "algorithm": "nls",
            "sampling": nls.sampling,
            "sample_every": nls.sample_every,
            "sparse_adapter": nls.sparse_adapter,
            "base_model_id": nls.base_model_id,
            "lora": dataclasses.asdict(nls.lora),
            "elasticity": {
                "available_elasticity_dims": ["lora_rank"],
                "lora_rank": {"groups": nls.elasticity.groups, "widths": nls.elasticity.ranks},
            },
        }
    nas["search"] = dataclasses.asdict(cfg.search)
    out["bootstrapNAS"] = nas
    for key in SECTIONS:
        out[key] = dataclasses.asdict(getattr(cfg, key))
    return out


def resolve_file(value: str, folder: str | os.PathLike) -> str:
    """A relative file name of a config: the file in the config's ``folder``, else in the data folder
    (:func:`shears_nncf.io.data_root`), else as written (the working folder; or a Hugging Face dataset name)."""
    p = Path(value)
    if p.is_absolute():
        return value
    for base in (Path(folder), data_root()):
        if (base / p).exists():
            return str((base / p).resolve())
    return value


def _resolve_task_files(specs: str, folder) -> str:
    """``TASK=FILE`` entries of a comma-separated list, their files resolved."""
    out = []
    for spec in specs.split(","):
        name, sep, file = spec.partition("=")
        out.append(f"{name}={resolve_file(file.strip(), folder)}" if sep else spec)
    return ",".join(out)


def resolve_paths(cfg: ShearsConfig, folder: str | os.PathLike) -> ShearsConfig:
    """``cfg`` with every file it names resolved by :func:`resolve_file` (data, calibration, task files), so that a
    config runs from any working folder."""
    changes: dict[str, Any] = {}
    if cfg.compression is not None and cfg.compression.calibration:
        calibration = resolve_file(cfg.compression.calibration, folder)
        changes["compression"] = with_overrides(cfg.compression, calibration=calibration)
    if cfg.training.data:
        changes["training"] = with_overrides(cfg.training, data=[resolve_file(d, folder) for d in cfg.training.data])
    if cfg.export.calibration:
        changes["export"] = with_overrides(cfg.export, calibration=resolve_file(cfg.export.calibration, folder))
    strategy = cfg.search.strategy
    strategy = resolve_file(strategy, folder) if strategy.endswith(".json") else strategy
    changes["search"] = with_overrides(cfg.search, strategy=strategy, eval=_resolve_task_files(cfg.search.eval, folder))
    if cfg.eval.tasks:
        changes["eval"] = with_overrides(cfg.eval, tasks=[_resolve_task_files(t, folder) for t in cfg.eval.tasks])
    if cfg.model and not Path(cfg.model).is_absolute() and (Path(folder) / cfg.model).is_dir():
        changes["model"] = str((Path(folder) / cfg.model).resolve())
    return dataclasses.replace(cfg, **changes)


def load_config(path: str | os.PathLike) -> ShearsConfig:
    """Read, validate and type an NNCF-style JSON config file, its relative file names resolved
    (:func:`resolve_file`)."""
    cfg = from_dict(read_json(path, "config file"), source=f"config {os.fspath(path)}")
    return resolve_paths(cfg, Path(path).resolve().parent)


def save_config(cfg: ShearsConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as a config file that :func:`load_config` reads back to an equal config."""
    write_json(path, to_dict(cfg))


def with_overrides(section: Any, **overrides: Any) -> Any:
    """``section`` with the given settings (those not None) replaced, its checks run again."""
    return dataclasses.replace(section, **{k: v for k, v in overrides.items() if v is not None})
