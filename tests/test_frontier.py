"""benchmarks/frontier.py: the paired subset accuracies, the pause of a running study, the table and the plot."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shears_nncf.likelihood import wilson_interval

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["frontier"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("frontier", None)
    sys.path.remove(str(SCRIPT.parent))


def test_subset_rescores_the_first_questions_from_the_samples(frontier, tmp_path):
    # boolq: right, wrong, right (norm: wrong, wrong, right), then a fourth question past the limit
    boolq = [
        {"prediction": 0, "prediction_norm": 1, "label": 0},
        {"prediction": 1, "prediction_norm": 1, "label": 0},
        {"prediction": 1, "prediction_norm": 1, "label": 1},
        {"prediction": 0, "prediction_norm": 0, "label": 0},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"samples": {"boolq": boolq}}))
    got = frontier.subset(path, 3)["boolq"]
    assert (got["correct"], got["total"]) == (2, 3)
    assert got["accuracy"] == pytest.approx(2 / 3) and got["acc_norm"] == pytest.approx(1 / 3)
    assert got["acc_ci95"] == wilson_interval(2, 3)


def test_pause_stops_and_continues_the_whole_process_tree(frontier):
    import psutil

    script = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 20
        while not psutil.Process(parent.pid).children() and time.time() < deadline:
            time.sleep(0.1)
        child = psutil.Process(parent.pid).children()[0]
        stopped = frontier._stop_tree(parent.pid, signal.SIGSTOP)
        assert sorted(stopped) == sorted([parent.pid, child.pid])
        time.sleep(0.3)
        assert {psutil.Process(p).status() for p in stopped} == {psutil.STATUS_STOPPED}
        frontier._stop_tree(parent.pid, signal.SIGCONT)
        time.sleep(0.3)
        assert psutil.STATUS_STOPPED not in {psutil.Process(p).status() for p in stopped}
        assert frontier._stop_tree(999_999_999, signal.SIGCONT) == []  # a finished study: nothing to continue
    finally:
        for p in psutil.Process(parent.pid).children() + [psutil.Process(parent.pid)]:
            p.kill()


def _task(acc, correct, total):
    return {
        "accuracy": acc,
        "acc_ci95": wilson_interval(correct, total),
        "acc_norm": acc,
        "acc_norm_ci95": wilson_interval(correct, total),
        "correct": correct,
        "total": total,
    }


def test_table_and_plot_from_the_results(frontier, tmp_path):
    tasks = frontier.TASKS
    results = {
        "settings": {
            "ir_limit": 500,
            "max_train_samples": 2000,
            "train_data": ["boolq/train.json"],
            "lr": 3e-4,
            "batch_size": 16,
            "epochs": 1.0,
        },
        "rows": {
            "dense/none": {
                "label": "dense, untuned",
                "runtime": "torch f32",
                "weight_bytes_per_token": 538_000_000,
                "train_records_seen": 0,
                "mean": 0.25,
                "tasks": {t: _task(0.25, 250, 1000) for t in tasks},
            },
            "wanda50/shears/w8a8": {
                "label": "Shears W8A8",
                "runtime": "OpenVINO IR (infer request)",
                "ir": "x",
                "weight_bytes_per_token": 150_000_000,
                "weight_bytes_per_token_sparse_kernel": 95_000_000,
                "train_records_seen": 2000,
                "mean": 0.5,
                "tasks": {t: _task(0.5, 250, 500) for t in tasks},
                "torch_same_questions": {"key": "x", "tasks": {t: _task(0.4, 200, 500) for t in tasks}},
            },
        },
        "speed": {
            "variants": {
                "wanda50/shears/w8a8": {
                    "tpot_ms_1t": 12.34,
                    "tpot_ms_2t": 7.5,
                    "tokens_per_s_4": 100.4,
                    "tokens_per_s_16": 300,
                    "tokens_per_s_64": 500,
                    "kernels": {"jit_gemm_i8": 3},
                }
            }
        },
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    frontier.main(["--results", str(path), "--table", str(tmp_path / "t" / "frontier.md")])
    md = (tmp_path / "t" / "frontier.md").read_text()
    shears = next(line for line in md.splitlines() if line.startswith("| Shears W8A8 |"))
    cells = [c.strip() for c in shears.strip("|").split("|")]
    lo, hi = wilson_interval(250, 500)
    assert cells[2] == f"50.0 ± {50 * (hi - lo):.1f} (n=500)"  # fewer questions than the torch row: n shown
    assert cells[6:] == ["50.0", "150.0 (95.0 sparse kernel)", "2000", "12.3 / 7.5", "100 / 300 / 500", "jit_gemm_i8 3"]
    dense = next(line for line in md.splitlines() if line.startswith("| dense, untuned |"))
    assert "(n=" not in dense and "| 538.0 |" in dense and dense.endswith("| - | - | - |")
    assert "| Shears W8A8 | 50.0 vs 40.0 |" in md  # the paired comparison with the torch model
    assert (tmp_path / "t" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
