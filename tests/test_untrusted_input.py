"""Inputs never run code: no remote code from a config file, no pickle weights, for every stage that loads them."""
import json

import pytest
import torch
from tiny_models import save_tiny

from shears_nncf.cli import main

PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture
def planted(tmp_path):
    """A model folder whose config asks for its own Python code; importing any of it writes ``marker``."""
    folder = save_tiny(tmp_path / "evil")
    marker = tmp_path / "payload_ran"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "evil_llama"
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(PAYLOAD.format(marker=str(marker)))
    return folder, marker


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_config_file_cannot_switch_on_remote_code(planted, tmp_path, capsys):
    folder, marker = planted
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"trust_remote_code": True, "compression": [{"algorithm": "magnitude", "sparsity_level": 0.5}]}))
    out = tmp_path / "out"
    for argv in (["prune", "--model", str(folder), "--output", str(out), "--config", str(cfg)],
                 ["run", "--config", str(cfg), "--output", str(out)]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert "trust_remote_code" in line and "--trust-remote-code" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("stage", ["prune", "export"])
def test_remote_code_stays_off_without_the_flag(planted, tmp_path, capsys, stage):
    folder, marker = planted
    out = tmp_path / "out"
    argv = {"prune": ["prune", "--model", str(folder), "--output", str(out), "--method", "magnitude"],
            "export": ["export", "--model", str(folder), "--output", str(out), "--quantize", "none"]}[stage]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "evil" in line or "trust_remote_code" in line or "custom code" in line, line
    assert not marker.exists() and not out.exists()


def test_pickle_model_weights_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file

    folder = save_tiny(tmp_path / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")  # the same weights, pickled
    (folder / "model.safetensors").unlink()
    out = tmp_path / "out"
    capsys.readouterr()  # what setting up printed
    assert main(["prune", "--model", str(folder), "--output", str(out), "--method", "magnitude"]) == 2
    line = one_error_line(capsys)
    assert "pickle" in line and "safetensors" in line
    assert not out.exists()


def test_pickle_adapter_is_refused(tiny_llama, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), LoraConfig(r=4, target_modules=["q_proj"]))
    model.save_pretrained(adapter, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file() and not (adapter / "adapter_model.safetensors").exists()
    out = tmp_path / "e.json"
    capsys.readouterr()  # what setting up printed
    assert main(["eval", "--model", str(tiny_llama), "--adapter", str(adapter), "--tasks", "boolq=" + str(tmp_path / "x.json"),
                 "--output", str(out)]) == 2
    assert "does not exist" in one_error_line(capsys)  # the data file is checked first
    (tmp_path / "x.json").write_text(json.dumps([{"instruction": "Is it?", "input": "", "output": "true", "answer": "true"}]))
    assert main(["eval", "--model", str(tiny_llama), "--adapter", str(adapter), "--tasks", "boolq=" + str(tmp_path / "x.json"),
                 "--output", str(out)]) == 2
    line = one_error_line(capsys)
    assert "adapter_model.safetensors" in line and "pickle" in line
    assert not out.exists()
