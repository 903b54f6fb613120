"""benchmarks/frontier.py: per-question outcomes and paired differences, the pause of a running study, the table and
the plot."""

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


def test_correct_bits_keep_each_question_in_order(frontier, tmp_path):
    boolq = [
        {"prediction": 0, "prediction_norm": 1, "label": 0},
        {"prediction": 1, "prediction_norm": 1, "label": 0},
        {"prediction": 1, "prediction_norm": 0, "label": 1},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"samples": {"boolq": boolq}}))
    assert frontier.correct_bits(path) == {"boolq": "101"}


def test_paired_difference_against_a_direct_count(frontier):
    import numpy as np

    rng = np.random.default_rng(1)
    a, b = {}, {}
    for t, n in zip(frontier.TASKS, (400, 300, 200, 100)):
        a[t] = "".join(rng.choice(["0", "1"], size=n, p=[0.4, 0.6]))
        b[t] = "".join(rng.choice(["0", "1"], size=n + 50))  # b scored more questions: only the first n are paired
    d = frontier.paired_difference(a, b)
    for t in frontier.TASKS:
        n = len(a[t])
        want = (a[t].count("1") - b[t][:n].count("1")) / n
        assert d["tasks"][t] == {"n": n, "diff": pytest.approx(want)}
    assert d["mean"] == pytest.approx(np.mean([d["tasks"][t]["diff"] for t in frontier.TASKS]))
    lo, hi = d["ci95"]
    # the bootstrap interval sits around the mean, about as wide as the normal approximation of paired differences
    se = np.sqrt(
        sum(
            np.var(np.array(list(a[t]), int) - np.array(list(b[t][: len(a[t])]), int)) / len(a[t])
            for t in frontier.TASKS
        )
    ) / len(frontier.TASKS)
    assert lo < d["mean"] < hi and (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    same = frontier.paired_difference(a, a)
    assert same["mean"] == 0 and same["ci95"] == [0.0, 0.0]
    assert frontier.paired_difference(a, {}) is None


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
            "dense/lora/int4-awq": {
                "label": "dense int4",
                "runtime": "torch f32",
                "weight_bytes_per_token": 538_000_000,
                "train_records_seen": 0,
                "mean": 0.25,
                "tasks": {t: _task(0.25, 250, 1000) for t in tasks},
                "correct": {t: "0" * 750 + "1" * 250 for t in tasks},
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
                "correct": {t: "1" * 500 for t in tasks},
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
    dense = next(line for line in md.splitlines() if line.startswith("| dense int4 |"))
    assert "(n=" not in dense and "| 538.0 |" in dense and dense.endswith("| - | - | - |")
    # paired on the first 500 questions, where the dense row got none right and the Shears row all of them
    pair = next(line for line in md.splitlines() if "| wanda50/shears/w8a8 | dense/lora/int4-awq |" in line)
    assert "+100.0 (n=500)" in pair and pair.endswith("| +100.0 [+100.0, +100.0] | a higher |")
    assert (tmp_path / "t" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
