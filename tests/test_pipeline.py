"""`shears-nncf run` end to end on a tiny random Llama: every stage's files exist and load with stock tools."""

import dataclasses
import json

import pytest
import torch
from report_shapes import assert_report_shape

from shears_nncf.cli import main
from shears_nncf.reports import BenchReport, EvalReport, ExportReport, RunReport, SparsityReport


@pytest.fixture
def run_config(tmp_path, tiny_llama, calib_file, shared_dir):
    records = [
        {
            "instruction": f"What is {i} plus {i}?",
            "input": "",
            "output": f"The answer is {2 * i}.",
            "answer": str(2 * i),
        }
        for i in range(40)
    ]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    cfg = {
        "model": str(tiny_llama),
        "compression": [
            {"algorithm": "wanda", "sparsity_level": 0.5, "calibration": str(calib_file), "nsamples": 4, "seqlen": 32}
        ],
        "bootstrapNAS": {
            "training": {
                "algorithm": "nls",
                "lora": {"lora_alpha": 16, "lora_dropout": 0.0},
                "elasticity": {
                    "available_elasticity_dims": ["lora_rank"],
                    "lora_rank": {
                        "groups": [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]],
                        "widths": [8, 6, 4],
                    },
                },
            },
            "search": {"strategy": "hill-climbing", "eval": "loss", "budget": 4, "limit": 8},
        },
        "training": {
            "data": [str(data)],
            "batch_size": 4,
            "max_steps": 4,
            "warmup_steps": 1,
            "cutoff_len": 64,
            "val_set_size": 8,
            "logging_steps": 1,
            "save_steps": 2,
        },
        # W8A8 ranges from the training records (the task); the demo config keeps C4
        "export": {"quantize": "w8a8", "calibration": str(data), "nsamples": 4, "seqlen": 16},
        "bench": {"prompt_len": 8, "new_tokens": 4, "repeats": 1},
        "eval": {"tasks": ["SingleEq"], "limit": 4, "batch_size": 4, "max_new_tokens": 8, "ir": True},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.slow
def test_run_end_to_end(tmp_path, run_config, capsys):
    from optimum.intel import OVModelForCausalLM
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(["run", "--config", str(run_config), "--output", str(out)]) == 0
    for name in [
        "sparse_model/config.json",
        "sparse_model/sparsity_report.json",
        "super_adapter/adapter_model.safetensors",
        "super_adapter/elastic_config.json",
        "super_adapter/training_report.json",
        "sub_adapter/adapter_config.json",
        "sub_adapter/search_report.json",
        "openvino_ir/openvino_model.xml",
        "openvino_ir/export_report.json",
        "bench_report.json",
        "eval_report.json",
        "report.json",
        "report.md",
        "loss_curve.png",
    ]:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert set(report["stage_seconds_this_run"]) == {"prune", "train", "search", "export", "bench", "eval"}
    ev = json.loads((out / "eval_report.json").read_text())
    assert set(ev) == {"torch", "openvino"}
    assert report["export"]["calibration"]["source"] == str(tmp_path / "train.json")
    # the run's summary and every stage's report have the keys their types declare
    assert_report_shape(report, RunReport)
    for part, cls in (("sparsity", SparsityReport), ("export", ExportReport), ("bench", BenchReport)):
        assert_report_shape(report[part], cls)
    for runtime in ("torch", "openvino"):
        assert_report_shape(ev[runtime], EvalReport)

    base = AutoModelForCausalLM.from_pretrained(out / "sparse_model")
    q = base.model.layers[0].self_attn.q_proj.weight
    assert (q == 0).sum(dim=1).eq(q.shape[1] // 2).all()  # exactly half of every row
    model = PeftModel.from_pretrained(base, out / "sub_adapter")
    ids = torch.tensor([[1, 5, 9, 13]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    ov = OVModelForCausalLM.from_pretrained(out / "openvino_ir")
    assert ov.generate(input_ids=ids, max_new_tokens=3, do_sample=False).shape[1] == 7

    # the IR carries the searched sub-adapter: each LoRA B has the rank the search chose for its module, and each
    # LoRA A (one per group of layers that share an input) the sum of its layers' ranks
    import openvino as ov

    from shears_nncf.elastic import SearchSpace
    from shears_nncf.ir import IR_NAME, ir_layers

    chosen = json.loads((out / "sub_adapter" / "search_report.json").read_text())["chosen"]["config"]
    want = SearchSpace.load(out / "super_adapter").module_ranks(chosen)
    layers = ir_layers(ov.Core().read_model(out / "openvino_ir" / IR_NAME))
    assert {k.removesuffix(".lora_B"): v["shape"][1] for k, v in layers.items() if v["role"] == "lora_B"} == want
    a_rows = {
        tuple(v.get("members", [k.removesuffix(".lora_A")])): v["shape"][0]
        for k, v in layers.items()
        if v["role"] == "lora_A"
    }
    assert sorted(m for group in a_rows for m in group) == sorted(want)
    assert all(rows == sum(want[m] for m in group) for group, rows in a_rows.items())

    # the effective config written beside the outputs reloads to the config run, and reruns to the same model
    from shears_nncf.config_file import load_config
    from shears_nncf.models import load_model

    saved = load_config(out / "shears_config.json")
    assert saved == dataclasses.replace(load_config(run_config), output=str(out))
    assert (
        main(["run", "--config", str(out / "shears_config.json"), "--output", str(tmp_path / "again"), "--to", "prune"])
        == 0
    )
    first, second = (
        load_model(str(out / "sparse_model")).state_dict(),
        load_model(str(tmp_path / "again" / "sparse_model")).state_dict(),
    )
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    # a re-run skips every finished stage
    assert main(["run", "--config", str(run_config), "--output", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["stage_seconds_this_run"] == {}
    assert again["stage_seconds"] == report["stage_seconds"]  # the skipped stages keep their first-run times
    md = (out / "report.md").read_text()
    assert "| chosen |" in md and "| minimal |" in md and "zero fraction of the pruned projections: 0.5" in md


@pytest.mark.slow
def test_run_sparse_adapter_merge_path(tmp_path, run_config):
    """sparse_adapter + export.merge: one plain sparse IR, no LoRA MatMuls, every stage-1 zero kept."""
    cfg = json.loads(run_config.read_text())
    cfg["bootstrapNAS"]["training"]["sparse_adapter"] = True
    cfg["export"]["merge"] = True
    cfg["bootstrapNAS"]["search"] = {"strategy": "heuristic"}
    run_config.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", "--config", str(run_config), "--output", str(out), "--to", "export"]) == 0
    assert (out / "sub_adapter" / "sparse_adapter.json").is_file()
    report = json.loads((out / "openvino_ir" / "export_report.json").read_text())
    assert report["config"]["merge"] and report["lora_matmuls"] == 0 and report["zeros_checked_layers"] == 14
    # without sparse_adapter the merge is refused before any stage runs
    cfg["bootstrapNAS"]["training"]["sparse_adapter"] = False
    run_config.write_text(json.dumps(cfg))
    assert main(["run", "--config", str(run_config), "--output", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


def test_run_rejects_bad_stage_range(tmp_path, run_config, capsys):
    assert (
        main(["run", "--config", str(run_config), "--output", str(tmp_path / "o"), "--from", "export", "--to", "prune"])
        == 2
    )
    assert "comes after" in capsys.readouterr().err
    assert main(["run", "--config", str(run_config), "--output", str(tmp_path / "o"), "--from", "quantize"]) == 2
    assert "unknown stage" in capsys.readouterr().err


@pytest.mark.slow
def test_run_with_runtime_adapters_benches_and_evaluates_through_genai(tmp_path, run_config):
    """export.adapter_mode runtime: the base IR + the sub-adapter file, and bench / eval --ir apply it through GenAI."""
    cfg = json.loads(run_config.read_text())
    cfg["export"] = {"quantize": "none", "adapter_mode": "runtime", "inference_precision": "f32"}
    cfg["bootstrapNAS"]["search"] = {"strategy": "heuristic"}
    run_config.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["run", "--config", str(run_config), "--output", str(out)]) == 0
    export = json.loads((out / "openvino_ir" / "export_report.json").read_text())
    assert export["config"]["adapter_mode"] == "runtime" and export["lora_matmuls"] == 0
    assert list(export["genai_adapters"]) == ["sub_adapter"]
    bench = json.loads((out / "bench_report.json").read_text())
    assert bench["runtime"] == "genai" and bench["adapter"] == "sub_adapter"
    ev = json.loads((out / "eval_report.json").read_text())["openvino"]
    assert ev["runtime"] == "genai" and ev["adapter"] == "sub_adapter" and ev["inference_precision"] == "f32"
