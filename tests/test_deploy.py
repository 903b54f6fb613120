"""The deploy recipes of docs/deploy.md: lm-eval on the IR with the shipped task files, `optimum-cli export shears`
at parity with `shears-nncf export`, Ctrl-C on `generate`, configs that run from any folder, hub ids offline."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_likelihood import RECORDS
from tiny_models import save_tiny

from shears_nncf.config import EvalConfig, ExportConfig
from shears_nncf.exporting import export

REPO = Path(__file__).resolve().parents[1]
LM_EVAL_TASKS = {
    "ARC-Easy": "shears_arc_easy",
    "boolq": "shears_boolq",
    "winogrande": "shears_winogrande",
    "piqa": "shears_piqa",
}


def _variants(record: dict, n: int) -> list[dict]:
    """``n`` questions from one: a number put in the question and the gold label cycled, so that acc is not 0 or 1."""
    import re

    lead = re.search(r"(question|sentence): ", record["instruction"]).end()
    labels = re.search(r"Answer format: (.*)$", record["instruction"]).group(1).split("/")
    return [
        {
            **record,
            "instruction": record["instruction"][:lead] + f"{i} " + record["instruction"][lead:],
            "answer": labels[i % len(labels)],
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    model = save_tiny(root / "model")
    export(model, root / "ir", config=ExportConfig(quantize="none"))
    return model, root / "ir"


def test_lm_eval_on_the_ir_gives_eval_likelihood_acc(tiny_ir, tmp_path, monkeypatch):
    """lm-eval's own OpenVINO backend (optimum-intel, with the IR's ov_config.json) on the shipped task files scores
    every question as `shears-nncf eval --scoring likelihood --ir` does."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from shears_nncf.evaluation import evaluate
    from shears_nncf.lm_eval_tasks import TASK_DIR

    model, ir = tiny_ir
    data = tmp_path / "data"
    for task in LM_EVAL_TASKS:
        (data / "llm_adapters" / task).mkdir(parents=True)
        (data / "llm_adapters" / task / "test.json").write_text(json.dumps(_variants(RECORDS[task], 8)))
    monkeypatch.setenv("SHEARS_NNCF_DATA", str(data))
    ours = evaluate(str(model), EvalConfig(tasks=list(LM_EVAL_TASKS), scoring="likelihood"), ir=ir)["tasks"]
    theirs = lm_eval.simple_evaluate(
        model="openvino",
        model_args=f"pretrained={ir},ov_config={ir}/ov_config.json",
        tasks=list(LM_EVAL_TASKS.values()),
        task_manager=TaskManager(include_path=TASK_DIR),
        batch_size=1,
        device="cpu",
    )["results"]
    for task, name in LM_EVAL_TASKS.items():
        assert ours[task]["total"] == 8
        assert theirs[name]["acc,none"] == pytest.approx(ours[task]["acc"], abs=1e-12), task
        if task != "winogrande":
            assert theirs[name]["acc_norm,none"] == pytest.approx(ours[task]["acc_norm"], abs=1e-12), task
    assert 0 < sum(ours[t]["acc"] for t in LM_EVAL_TASKS) < len(LM_EVAL_TASKS)  # not all right or all wrong


def test_optimum_cli_export_shears_at_parity(tiny_ir, tmp_path, monkeypatch, capsys):
    """Run-time adapters, repeated --adapter, no NNCF chatter, and the summary `shears-nncf export` prints."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from optimum.commands import optimum_cli
    from shears_nncf.exporting import format_report

    model, _ = tiny_ir
    adapters = []
    for name in ("task_a", "task_b"):
        base = AutoModelForCausalLM.from_pretrained(model)
        get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / name)
        adapters += ["--adapter", str(tmp_path / name)]
    out = tmp_path / "ir"
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "optimum-cli",
            "export",
            "shears",
            "-m",
            str(model),
            *adapters,
            "--adapter-mode",
            "runtime",
            "--weight-format",
            "fp32",
            str(out),
        ],
    )
    capsys.readouterr()
    optimum_cli.main()
    captured = capsys.readouterr()
    report = json.loads((out / "export_report.json").read_text())
    assert sorted(report["genai_adapters"]) == ["task_a", "task_b"]
    assert captured.out.strip() == format_report(report, str(out))
    assert "Not adding" not in captured.out + captured.err
    with pytest.raises(SystemExit) as stop:  # --merge reaches the export's own check
        monkeypatch.setattr(
            sys,
            "argv",
            [
                "optimum-cli",
                "export",
                "shears",
                "-m",
                str(model),
                "--adapter",
                str(tmp_path / "task_a"),
                "--merge",
                str(tmp_path / "merged"),
            ],
        )
        optimum_cli.main()
    assert stop.value.code == 2 and "not trained sparsity-masked" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


def test_ctrl_c_stops_generate_within_a_second(tmp_path):
    """A model whose context allows a long answer; SIGINT mid-generation: the generation stops and says so in one
    line within a second, and the process exits 130 (its interpreter's teardown comes after)."""
    import threading

    model = save_tiny(tmp_path / "model", max_position_embeddings=100_000)
    export(model, tmp_path / "ir", config=ExportConfig(quantize="none"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shears_nncf",
            "generate",
            str(tmp_path / "ir"),
            "--prompt",
            "The quick brown fox",
            "--max-new-tokens",
            "90000",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.read(20)  # generation has started: text is streaming
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    sent = None
    lines = []

    def read_err():
        for line in proc.stderr:
            lines.append((time.perf_counter(), line.rstrip()))

    reader = threading.Thread(target=read_err, daemon=True)
    reader.start()
    time.sleep(0.5)  # what the imports logged has arrived
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    reader.join(10)
    after = [(t - sent, line) for t, line in lines if t >= sent and line.strip()]
    assert [line for _, line in after] == ["shears-nncf generate: interrupted"], lines[-5:]
    assert after[0][0] < 1.0, after


def test_a_shipped_config_runs_from_another_folder(tmp_path, monkeypatch, shared_dir):
    """The repository's configs name data relative to the data folder: loaded from elsewhere, every file resolves."""
    from shears_nncf.config_file import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHEARS_NNCF_DATA", str(shared_dir / "data"))
    cfg = load_config(REPO / "configs" / "smollm2_135m_gsm8k.json")
    files = [cfg.compression.calibration, *cfg.training.data]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in files), files
    assert cfg.training.data == [str((shared_dir / "data" / "gsm8k" / "train.jsonl").resolve())]


def test_config_paths_resolve_against_its_folder_then_the_data_folder(tmp_path, monkeypatch):
    from shears_nncf.config_file import load_config

    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "mine.json").write_text("[]")
    (tmp_path / "data" / "calibration").mkdir(parents=True)
    (tmp_path / "data" / "calibration" / "c4.json").write_text("[]")
    cfg_file = tmp_path / "cfgdir" / "cfg.json"
    cfg_file.write_text(
        json.dumps(
            {
                "compression": {"algorithm": "wanda", "calibration": "calibration/c4.json"},
                "training": {"data": ["mine.json", "gsm8k"]},  # gsm8k: a hub dataset name
                "eval": {"tasks": ["boolq=mine.json", "piqa"]},
            }
        )
    )
    monkeypatch.setenv("SHEARS_NNCF_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path / "data")
    cfg = load_config(cfg_file)
    assert cfg.compression.calibration == str(tmp_path / "data" / "calibration" / "c4.json")
    assert cfg.training.data == [str(tmp_path / "cfgdir" / "mine.json"), "gsm8k"]
    assert cfg.eval.tasks == [f"boolq={tmp_path / 'cfgdir' / 'mine.json'}", "piqa"]


def test_run_takes_the_model_a_release_config_lacks(tmp_path, monkeypatch, capsys):
    """configs/original names no model and no data: `run --model --data` supplies them (checked before any stage)."""
    from shears_nncf.cli import main

    model = save_tiny(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    cfg = REPO / "configs" / "original" / "nncf_shears_llama.json"
    assert main(["run", "--config", str(cfg), "--output", str(tmp_path / "out"), "--to", "train"]) == 2
    assert "pass --model" in capsys.readouterr().err
    # with the model, the release config's NNCF node patterns are matched on it: the next thing it lacks is data
    assert (
        main(["run", "--config", str(cfg), "--model", str(model), "--output", str(tmp_path / "out"), "--to", "train"])
        == 2
    )
    assert "no training.data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_hub_id_in_the_local_cache_loads_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1: a hub id whose files are in the Hugging Face cache is a model, as stock AutoConfig says."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    from shears_nncf.errors import ShearsError
    from shears_nncf.models import base_model_id, model_skeleton

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    save_tiny(snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert AutoConfig.from_pretrained("someone/tiny", cache_dir=str(cache)).hidden_size == 64
    assert model_skeleton("someone/tiny").config.hidden_size == 64
    assert base_model_id("someone/tiny") == "someone/tiny"  # an adapter on it records the hub id
    with pytest.raises(ShearsError, match="does not exist"):
        model_skeleton("someone/not-cached")
