import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import save_tiny  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A saved tiny random Llama folder (model + tokenizer); treat it as read-only."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture
def calib_file(tmp_path) -> Path:
    """A small JSON-lines calibration file in the c4 format ({"text": ...} per line)."""
    import json

    from tiny_models import CORPUS

    path = tmp_path / "calib.jsonl"
    with path.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"text": " ".join(CORPUS[(i + j) % len(CORPUS)] for j in range(6))}) + "\n")
    return path
