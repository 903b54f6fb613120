"""One declaration per setting: the config dataclasses' fields carry their JSON-schema rule and help text.

Every setting is a dataclass field declared with :func:`option`; from that one declaration come the JSON schema
of its config section (:func:`section_schema`), the check a dataclass runs on itself (:func:`check_fields`), the
command-line option and its help (:func:`add_options`, :func:`overrides`) and the wording of every error
(:func:`phrase`). A rule is therefore written once, and a config file, a flag and a Python call are refused in
the same words.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Optional

import jsonschema

from .errors import ShearsError

POSITIVE_INT = {"type": "integer", "minimum": 1}
STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}


def option(
    default: Any = dataclasses.MISSING,
    *,
    schema: dict,
    help: str = "",
    flag: Optional[str] = None,
    factory: Any = dataclasses.MISSING,
    cli_type: Any = None,
) -> Any:
    """A config field: its default, its JSON-schema rule, its help text and (if not ``--name-with-dashes``) its flag.

    ``cli_type`` converts the flag's text where the schema's type does not say how (e.g. comma-separated lists).
    """
    meta = {"schema": schema, "help": help, "flag": flag, "cli_type": cli_type}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nullable(schema: dict) -> dict:
    """``schema`` or null (a setting whose None means "the default behaviour")."""
    return {"oneOf": [{"type": "null"}, schema]}


def enum(values: tuple) -> dict:
    return {"enum": list(values)}


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "schema" in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def section_schema(cls, rename: Optional[dict] = None, extra: Optional[dict] = None, required: tuple = ()) -> dict:
    """The JSON schema of a config section: one property per field (``rename``: field -> key), plus ``extra`` keys."""
    rename = rename or {}
    props = {rename.get(f.name, f.name): f.metadata["schema"] for f in _fields(cls)}
    schema = {"type": "object", "additionalProperties": False, "properties": {**props, **(extra or {})}}
    if required:
        schema["required"] = list(required)
    return schema


def phrase(schema: dict) -> str:
    """What a value must be, in words, from its schema: 'a positive integer', 'one of 'a', 'b'', 'a number in [0,
    1)'."""
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    if "description" in schema:
        return schema["description"]
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(phrase(s) for s in schema.get("oneOf", schema.get("anyOf")) if s.get("type") != "null")
    kind = schema.get("type")
    if kind == "array":
        inner = phrase(schema["items"]) if "items" in schema else "anything"
        return f"a list whose items are each {inner}" + (" (at least one)" if schema.get("minItems") else "")
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "an object"
    if kind in ("integer", "number"):
        noun = "integer" if kind == "integer" else "number"
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if lo == 1 and kind == "integer" and hi is None and xhi is None:
            return "a positive integer"
        if xlo == 0 and hi is None and xhi is None:
            return f"a positive {noun}"
        if lo == 0 and hi is None and xhi is None:
            return f"a {noun} >= 0"
        if (lo is not None or xlo is not None) and (hi is not None or xhi is not None):
            left = f"[{lo:g}" if lo is not None else f"({xlo:g}"
            right = f"{hi:g}]" if hi is not None else f"{xhi:g})"
            return f"a {noun} in {left}, {right}"
        if lo is not None:
            return f"a {noun} >= {lo:g}"
        return f"an {noun}" if kind == "integer" else "a number"
    if kind == "string":
        return "a non-empty string" if schema.get("minLength") else "a string"
    if isinstance(kind, list):
        return " or ".join(phrase({**schema, "type": k}) for k in kind)
    return "valid"


#: the largest integer a setting takes: beyond it a value is a typo (or an attack), not a count
MAX_INT = 2**63 - 1


def unreasonable_number(value: Any) -> Optional[str]:
    """Why a number cannot be a setting (NaN, an infinity, an integer beyond :data:`MAX_INT`), else None.

    JSON schema's bounds let NaN through (every comparison with it is false), so this is checked first.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"got {value!r}, which is not a finite number"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"got a {len(str(abs(value)))}-digit integer"
    return None


def _check(f: dataclasses.Field, value: Any) -> None:
    flag = flag_of(f)
    label = flag if flag == "--" + f.name.replace("_", "-") else f"{f.name} ({flag})"
    for item in value if isinstance(value, (list, tuple)) else [value]:
        why = unreasonable_number(item)
        if why:
            raise ShearsError(f"{label} must be {phrase(f.metadata['schema'])}, {why}")
    if not jsonschema.Draft202012Validator(f.metadata["schema"]).is_valid(value):  # True is no integer here
        raise ShearsError(f"{label} must be {phrase(f.metadata['schema'])}, got {value!r}")


def _is_list(schema: dict) -> bool:
    return schema.get("type") == "array" or any(s.get("type") == "array" for s in schema.get("oneOf", []))


def check_fields(obj: Any, names: Optional[tuple] = None) -> None:
    """Check each field of a config dataclass against its own schema; the error names the flag, the rule and the value.

    A list setting given as one string (``tasks="boolq,piqa"``) is first split as its command-line flag splits it,
    so Python calls take what the CLI takes.
    """
    for f in _fields(type(obj)):
        if names is None or f.name in names:
            value = getattr(obj, f.name)
            if isinstance(value, str) and f.metadata["cli_type"] is not None and _is_list(f.metadata["schema"]):
                value = f.metadata["cli_type"](value)
                setattr(obj, f.name, value)
            _check(f, value)


def check_value(cls, name: str, value: Any) -> None:
    """Check one value by the rule of field ``name`` of ``cls`` (for functions that take the setting loose)."""
    _check(next(f for f in _fields(cls) if f.name == name), value)


# ----------------------------------------------------------------------------------------- command line


def _cli_type(f: dataclasses.Field):
    if f.metadata.get("cli_type") is not None:
        return f.metadata["cli_type"]
    schema = f.metadata["schema"]
    kinds = {s.get("type") for s in schema.get("oneOf", [schema])} - {"null", None}
    if kinds == {"integer"}:
        return int
    if kinds <= {"number", "integer"} and kinds:
        return float
    return str


def from_text(cls, name: str, text: Optional[str]) -> Any:
    """A setting given as command-line text (by another tool's parser), converted as this package's flag converts it."""
    return None if text is None else _cli_type(next(f for f in _fields(cls) if f.name == name))(text)


def add_options(parser: argparse.ArgumentParser, cls, names: list[str]) -> None:
    """Add the command-line options of the fields ``names`` of ``cls``: flag, type and help from the declaration."""
    by_name = {f.name: f for f in _fields(cls)}
    for name in names:
        f = by_name[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "" if default in (None, "", []) or isinstance(default, bool) else f" (default: {default})"
        help_text = (f.metadata["help"] + shown).replace("%", "%%")
        if f.metadata["schema"].get("type") == "boolean":
            parser.add_argument(flag_of(f), dest=name, action="store_true", default=None, help=help_text)
        else:
            schema = f.metadata["schema"]
            choices = schema.get("enum") or next((s["enum"] for s in schema.get("oneOf", []) if "enum" in s), None)
            metavar = "|".join(map(str, choices)) if choices else flag_of(f).lstrip("-").upper().replace("-", "_")
            parser.add_argument(flag_of(f), dest=name, type=_cli_type(f), metavar=metavar, help=help_text)


def overrides(args: argparse.Namespace, cls, names: Optional[list[str]] = None) -> dict:
    """The options of ``cls`` given on the command line (None = not given), by field name."""
    names = names or [f.name for f in _fields(cls)]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
