"""Model cards: every folder a user gets loads with the stock tool its card names, from another working directory."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from tiny_models import CORPUS

from shears_nncf.config import (
    ElasticityConfig,
    ExportConfig,
    LoraSettings,
    NLSConfig,
    PruningConfig,
    SearchConfig,
    TrainingConfig,
)
from shears_nncf.exporting import export
from shears_nncf.pruning import prune
from shears_nncf.selection import search
from shears_nncf.training import train

RECORDS = [
    {
        "instruction": f"{CORPUS[i % len(CORPUS)]} Answer format: true/false",
        "input": "",
        "output": "the correct answer is true",
        "answer": "true",
    }
    for i in range(12)
]


def _nls(masked: bool) -> NLSConfig:
    return NLSConfig(
        elasticity=ElasticityConfig(groups=[["q_proj", "v_proj"], ["up_proj"]], ranks=[[4, 2]] * 2),
        lora=LoraSettings(lora_alpha=8, lora_dropout=0.0),
        sparse_adapter=masked,
    )


@pytest.fixture(scope="module")
def made(tiny_llama, tmp_path_factory):
    """prune -> train -> search (plain and masked) -> merge -> export (in-IR and run-time), as a user runs them."""
    from shears_nncf.merging import merge

    root = tmp_path_factory.mktemp("cards")
    data = root / "train.json"
    data.write_text(json.dumps(RECORDS))
    prune(tiny_llama, root / "sparse", PruningConfig(method="magnitude", sparsity_level=0.5))
    training = TrainingConfig(
        data=[str(data)], max_steps=1, batch_size=2, val_set_size=2, cutoff_len=200, warmup_steps=0
    )
    out = {"root": root, "sparse": root / "sparse"}
    for name, masked in (("plain", False), ("masked", True)):
        train(str(root / "sparse"), root / f"super_{name}", _nls(masked), training)
        search(str(root / "sparse"), root / f"super_{name}", root / f"sub_{name}", SearchConfig(strategy="maximal"))
        out[f"sub_{name}"] = root / f"sub_{name}"
    merge(root / "sparse", root / "sub_masked", root / "merged")
    out["merged"] = root / "merged"
    export(root / "sparse", root / "ir", adapter=root / "sub_plain", config=ExportConfig(quantize="none"))
    export(
        root / "sparse",
        root / "ir_rt",
        adapter=[root / "sub_plain"],
        config=ExportConfig(quantize="none", adapter_mode="runtime"),
    )
    out["ir"], out["ir_rt"] = root / "ir", root / "ir_rt"
    return out


def snippets(folder: Path, lang: str = "python") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL)


def run_elsewhere(code: str, cwd: Path, *args: str) -> str:
    """Run a card's snippet in a fresh interpreter whose working directory is unrelated to the folders."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_cards_carry_hub_metadata(made):
    base = made["root"] / "sparse"
    cards = {k: ModelCard.load(made[k] / "README.md").data for k in ("sparse", "sub_plain", "merged", "ir", "ir_rt")}
    for data in cards.values():
        assert data.pipeline_tag == "text-generation" and "shears" in data.tags and data.license
    assert cards["sub_plain"].library_name == "peft" and cards["ir"].library_name == "openvino"
    assert cards["sparse"].library_name == "transformers" == cards["merged"].library_name
    # the tiny model came from a folder, so every card names that folder's absolute path as the origin
    report = json.loads((base / "sparsity_report.json").read_text())
    assert cards["sparse"].base_model == str(Path(report["model"]).resolve())
    assert {c.base_model for c in cards.values()} == {cards["sparse"].base_model}
    text = (made["sub_plain"] / "README.md").read_text()
    assert "rank 4: 6 layer(s)" in text and str(made["root"] / "train.json") in text  # ranks and training data
    assert "merge_and_unload" in text and "not** an OpenVINO GenAI adapter" in text  # the traps
    assert "load_adapter" in (made["sub_masked"] / "README.md").read_text()  # stock PEFT would apply it unmasked
    assert "would run the base model without its adapter" in (made["ir_rt"] / "README.md").read_text()


def test_the_adapter_records_an_absolute_base(made, tmp_path, monkeypatch):
    """Stock PEFT's AutoPeftModelForCausalLM finds the base from any working directory, and gives the sparse
    model + adapter exactly (compared with the base loaded by its own path and PeftModel)."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((made["sub_plain"] / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(made["sparse"].resolve())
    monkeypatch.chdir(tmp_path)
    auto = AutoPeftModelForCausalLM.from_pretrained(made["sub_plain"]).eval()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(made["sparse"]), made["sub_plain"]).eval()
    ids = torch.tensor([[1, 17, 42, 99, 5]])
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, ref(ids).logits)
    q = auto.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert (q == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)  # the zeros kept


def test_base_model_id_option_sets_what_the_adapter_records(made, tmp_path):
    from shears_nncf.cli import main

    out = tmp_path / "sub"
    assert (
        main(
            [
                "search",
                "--model",
                str(made["sparse"]),
                "--adapter",
                str(made["root"] / "super_plain"),
                "--output",
                str(out),
                "--strategy",
                "minimal",
                "--base-model-id",
                "me/sparse-model",
            ]
        )
        == 0
    )
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/sparse-model"


@pytest.mark.parametrize("folder", ["sparse", "sub_plain", "merged", "ir", "ir_rt"])
def test_every_python_snippet_of_a_card_runs_from_another_folder(made, tmp_path, folder):
    codes = snippets(made[folder])
    assert codes, f"{folder} card has no snippet"
    for code in codes:
        run_elsewhere(code, tmp_path / "elsewhere")


def test_the_card_names_the_stored_options_and_benchmark_app_reads_them(made, tmp_path):
    """ov_config.json is what the IR's own options are; benchmark_app -load_config takes the per-device file."""
    import shlex

    from shears_nncf.runtime_options import ov_config

    ir = made["ir"]
    assert json.loads((ir / "ov_config.json").read_text()) == ov_config(ir)
    (command,) = [c for c in snippets(ir, "bash") if "benchmark_app" in c]
    argv = shlex.split(command.strip()) + ["-niter", "2", "-nireq", "1"]
    bench = Path(sys.executable).with_name("benchmark_app")
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run(
        [str(bench), *argv[1:]], cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    shown = dict(re.findall(r"\[ INFO \]\s+([A-Z_]+): (.*)", proc.stdout))  # the compiled model's properties
    options = ov_config(ir)
    rate = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
    assert float(shown[rate]) == pytest.approx(options[rate])
    assert options["INFERENCE_PRECISION_HINT"] == "f32" and shown["INFERENCE_PRECISION_HINT"] == "<Type: 'float32'>"
