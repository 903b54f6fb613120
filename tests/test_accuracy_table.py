"""benchmarks/accuracy_table.py on a tiny random Llama: every row, the right model under each, resumable."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shears_nncf.config import EvalConfig
from shears_nncf.elastic import SearchSpace
from shears_nncf.evaluation import evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_table.py"


@pytest.fixture(scope="module")
def table_module():
    """The script as the module ``accuracy_table``, importable by name: its trainings run in spawned children."""
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("accuracy_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_table"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("accuracy_table", None)
    sys.path.remove(str(SCRIPT.parent))


@pytest.fixture
def argv(tmp_path, tiny_llama, calib_file):
    records = [
        {
            "instruction": f"Which is larger? Answer format: answer1/answer2\n\nAnswer1: {i} Answer2: {i + 3}",
            "input": "",
            "output": "the correct answer is answer2",
            "answer": "answer2",
        }
        for i in range(24)
    ]
    train_file, task_file = tmp_path / "train.json", tmp_path / "questions.json"
    train_file.write_text(json.dumps(records))
    task_file.write_text(json.dumps(records[:4]))
    return [
        "--model",
        str(tiny_llama),
        "--work",
        str(tmp_path / "work"),
        "--results",
        str(tmp_path / "table.json"),
        "--sparsities",
        "0,0.5",
        "--train-data",
        str(train_file),
        "--tasks",
        f"ARC-Easy={task_file}",
        "--widths",
        "8,6,4",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--val-set-size",
        "4",
        "--budget",
        "3",
        "--calibration",
        str(calib_file),
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--eval-batch-size",
        "4",
    ]


@pytest.mark.slow
def test_every_row_scores_the_model_it_names_and_a_rerun_trains_nothing(
    table_module, argv, tmp_path, monkeypatch, capsys
):
    data = table_module.main(argv)
    rows = data["rows"]
    subs = [f"nls/{s}" for s in table_module.SUBADAPTERS]
    assert sorted(rows) == sorted(f"{p}/{m}" for p in ("dense", "wanda50") for m in ["none", "lora", *subs])
    for row in rows.values():
        assert row["tasks"]["ARC-Easy"]["total"] == 4
        assert 0 <= row["mean"] <= 1

    work = tmp_path / "work"
    sparse = work / "sparse" / "wanda50"
    weights = load_file(str(sparse / "model.safetensors"))
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert (q == 0).float().mean().item() == pytest.approx(0.5)  # the Wanda rows run on the sparse model
    # the untuned sparse row is what evaluate() says of the sparse model, independently loaded
    alone = evaluate(str(sparse), EvalConfig(tasks=[argv[argv.index("--tasks") + 1]], batch_size=4))
    assert rows["wanda50/none"]["tasks"]["ARC-Easy"]["correct"] == alone["tasks"]["ARC-Easy"]["correct"]

    lora = SearchSpace.load(work / "commonsense" / "wanda50" / "lora")
    assert {tuple(g.ranks) for g in lora.groups} == {(8,)}  # plain LoRA: one rank
    assert rows["wanda50/lora"]["adapter_params"] == rows["wanda50/nls/maximal"]["adapter_params"]
    space = SearchSpace.load(work / "commonsense" / "wanda50" / "nls")
    assert rows["wanda50/nls/minimal"]["config"] == space.minimal()
    assert rows["wanda50/nls/heuristic"]["config"] == space.heuristic()
    assert (
        rows["wanda50/nls/minimal"]["adapter_params"]
        < rows["wanda50/nls/heuristic"]["adapter_params"]
        < rows["wanda50/nls/maximal"]["adapter_params"]
    )
    hill = json.loads((work / "commonsense" / "wanda50" / "sub_hill-climbing" / "search_report.json").read_text())
    assert rows["wanda50/nls/hill-climbing"]["config"] == hill["chosen"]["config"]
    # the extracted minimal sub-adapter holds the first 4 ranks of the super-adapter
    sup = load_file(str(work / "commonsense" / "wanda50" / "nls" / "adapter_model.safetensors"))
    sub = load_file(str(work / "commonsense" / "wanda50" / "sub_minimal" / "adapter_model.safetensors"))
    key = next(k for k in sub if k.endswith("q_proj.lora_A.weight"))
    assert torch.equal(sub[key], sup[key][:4])

    table = capsys.readouterr().out
    assert "| Wanda 50% + Shears, hill-climbing |" in table and "| dense + NLS, heuristic |" in table

    def no_training(*a, **k):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(table_module, "train", no_training)
    monkeypatch.setattr(table_module, "evaluate", no_training)
    assert table_module.main(argv)["rows"] == rows


def test_other_settings_do_not_mix_into_a_results_file(table_module, tmp_path):
    path = tmp_path / "t.json"
    table_module.Table(path, {"epochs": 3}).add("dense/none", {"sparsity": 0, "method": "none"})
    with pytest.raises(SystemExit, match="epochs"):
        table_module.Table(path, {"epochs": 1})


def test_prune_method_reaches_stage_1_and_names_the_rows(table_module, argv, monkeypatch):
    """--prune-method METHOD+owl becomes the PruningConfig of stage 1, the folder and row keys, and the table's labels;
    a bad one stops before any work with one line."""
    args = table_module.parse_args(argv + ["--prune-method", "sparsegpt+owl"])
    cfg = table_module.prune_config(args.prune_method, 0.7, args)
    assert (cfg.method, cfg.sparsity_profile, cfg.sparsity_level, cfg.nsamples, cfg.seqlen) == (
        "sparsegpt",
        "owl",
        0.7,
        2,
        32,
    )
    assert (
        table_module.sparsity_key(0.7, "sparsegpt+owl") == "sparsegpt+owl70"
        and table_module.sparsity_key(0.5) == "wanda50"
    )
    data = {
        "settings": {"tasks": ["ARC-Easy"], "prune_method": "sparsegpt+owl"},
        "rows": {
            "sparsegpt+owl70/none": {
                "sparsity": 0.7,
                "method": "none",
                "tasks": {"ARC-Easy": {"accuracy": 0.5, "total": 4}},
            }
        },
    }
    assert "| SparseGPT+OWL 70% w/o tuning | 50.0 |" in table_module.markdown(data)
    with pytest.raises(SystemExit, match="--prune-method sparsegpt\\+foo"):
        table_module.run(table_module.parse_args(argv + ["--prune-method", "sparsegpt+foo"]))
