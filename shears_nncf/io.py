"""Output folders that appear whole or not at all, small JSON helpers, and where the shared data sits."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import ShearsError


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a scratch folder beside ``path`` and move it to ``path`` only if the block succeeds.

    A failed or interrupted stage therefore never leaves a half-written output folder behind.
    """
    final = Path(path)
    if final.exists() and not final.is_dir():
        raise ShearsError(f"output folder {final} is an existing file; choose another --output")
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ShearsError(f"output folder {final} exists and is not empty; choose another --output or remove it")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise ShearsError(
            f"cannot write the output folder {final} ({e.strerror}); choose a writable --output"
        ) from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


_SCRATCH = re.compile(r"\.(?P<name>.+)\.tmp-[^/]+")


def final_path(folder: str | os.PathLike) -> Path:
    """The absolute path ``folder`` will have: a scratch folder of :func:`atomic_output_dir` names its output."""
    folder = Path(folder).resolve()
    match = _SCRATCH.fullmatch(folder.name)
    return folder.with_name(match["name"]) if match else folder


def check_output_file(path: str | os.PathLike, what: str = "output file") -> None:
    """Before any work: ``path`` can be written as a file (not a folder; its folder exists or can be made)."""
    p = Path(path)
    if p.is_dir():
        raise ShearsError(f"{what} {p} is a folder; pass a file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p.parent, prefix=f".{p.name}.probe-"):
            pass
    except OSError as e:
        raise ShearsError(f"cannot write {what} {p} ({e.strerror}); choose a writable path") from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A user's UTF-8 text file; every way it can be unreadable is one :class:`ShearsError` naming it."""
    p = Path(path)
    if p.is_dir():
        raise ShearsError(f"{what} {p} is a folder; pass a file")
    if not p.is_file():
        raise ShearsError(f"{what} {p} does not exist; check the path")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ShearsError(
            f"{what} {p} is not UTF-8 text (byte {e.start} cannot be decoded); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ShearsError(f"cannot read {what} {p} ({e.strerror}); check its permissions") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    try:
        return json.loads(read_text(p, what))
    except json.JSONDecodeError as e:
        raise ShearsError(
            f"{what} {p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file"
        ) from None
    except RecursionError:
        raise ShearsError(f"{what} {p} nests too deeply to be read; fix the file") from None
    except ValueError as e:  # Python's limit on the digits of an integer
        raise ShearsError(f"{what} {p} holds an absurd number ({e}); fix the file") from None


def read_json_records(path: str | os.PathLike, what: str = "data file") -> list:
    """The records of a JSON array file or a JSON-lines file (told apart by the first character)."""
    p = Path(path)
    text = read_text(p, what)
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ShearsError(f"{what} {p} is not valid JSON (line {e.lineno}: {e.msg}); fix the file") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ShearsError(f"{what} {p} line {n} is not JSON ({e.msg}); use one JSON object per line") from None
    return records


#: suffixes of the user files this package reads: such a name is a file, never a Hugging Face dataset
FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".text", ".md", ".csv")
#: what a Hugging Face dataset name can be: ``name`` or ``owner/name``, then ``:CONFIG`` and ``@SPLIT``
HF_DATASET_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?(:[\w.-]+)?(@[\w.\[\]:%-]+)?")


def looks_like_path(name: str) -> bool:
    """Whether a name that is not an existing file was meant as one (so: "does not exist", not a Hub lookup)."""
    return (
        name.startswith((".", "/", "~")) or name.lower().endswith(FILE_SUFFIXES) or not HF_DATASET_NAME.fullmatch(name)
    )


def data_root() -> Path:
    """``$SHEARS_NNCF_DATA``, else the ``shared/data`` folder beside the working directory or the checkout.

    Calibration text, evaluation sets and training data default to files under this folder, which is never
    part of the package (it holds third-party data sets).
    """
    env = os.environ.get("SHEARS_NNCF_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def shared_data_file(relative: str) -> Optional[Path]:
    """``data_root() / relative`` if that file exists."""
    path = data_root() / relative
    return path if path.is_file() else None
