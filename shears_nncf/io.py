"""Output folders that appear whole or not at all, small JSON helpers, and where the shared data sits."""
from __future__ import annotations

import contextlib
import json
import os
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
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ShearsError(f"output folder {final} exists and is not empty; choose another --output or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_json(path: str | os.PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise ShearsError(f"{what} {p} does not exist; check the path")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ShearsError(f"{what} {p} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file") from None


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
