"""The README's Python API example runs as written, on a tiny random Llama in place of its model folder."""

import re
from pathlib import Path

import pytest
from tiny_models import save_tiny

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path, monkeypatch):
    import numpy as np
    import torch

    from shears_nncf.ir import check_zeros_preserved, ir_layers

    code = _python_api_example()
    assert 'MODEL = "tiny-llama"' in code
    monkeypatch.chdir(tmp_path)
    save_tiny(tmp_path / "tiny-llama")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)  # the README's own code, nothing else
    # what it claims: half of every pruned projection zero, a stock PEFT sub-adapter, a W8A8 IR with every zero kept
    assert scope["report"]["sparsity"] == pytest.approx(0.5)
    assert (tmp_path / "out/sub/adapter_config.json").is_file()
    base = scope["base"]
    masks = {
        n.removesuffix(".base_layer"): np.packbits((m.weight == 0).numpy(), axis=None)
        for n, m in base.named_modules()
        if ".layers." in n and ".lora_" not in n and isinstance(m, torch.nn.Linear)
    }
    layers = ir_layers(scope["ov_model"])
    assert check_zeros_preserved(layers, masks) == len(masks) == 14
    assert any(v["role"] == "lora_A" for v in layers.values())
    assert {v["activations"] for k, v in layers.items() if k.endswith("k_proj")} == {"int8"}
