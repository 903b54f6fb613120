"""The public Python API: every name importable and callable however often, the in-memory twins of the stages, and
an import graph without circles."""

import ast
import copy
import importlib
import json
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import run_config  # noqa: F401  (a fixture)
from tiny_models import CALIBRATION, make_model

import shears_nncf as sn

STAGES = ["prune", "train", "search", "export", "bench", "evaluate", "merge", "run", "generate"]
PACKAGE = Path(sn.__file__).parent


def _import_every_module() -> list[str]:
    names = [f"shears_nncf.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__"]
    for name in names:
        importlib.import_module(name)
    return names


def test_every_public_name_resolves_and_stays_callable_after_every_submodule_import():
    before = {n: getattr(sn, n) for n in sn.__all__}
    assert len(_import_every_module()) > 25
    for name in sn.__all__:
        assert getattr(sn, name) is before[name], name  # no submodule import rebinds a public name
    assert all(callable(getattr(sn, n)) for n in STAGES)
    assert sn.WandaConfig is sn.PruningConfig


def test_the_package_has_no_import_circle():
    """Every import of one module of the package by another, at the top or inside a function, forms no cycle."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps & {p.stem for p in PACKAGE.glob("*.py")}

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph[start])

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert circles == [], f"modules on an import circle: {circles}"


@pytest.mark.slow
def test_run_then_every_stage_twice(tmp_path, run_config):  # noqa: F811
    """``sn.run`` on a tiny model, then each stage function called twice on its outputs (each call a new folder)."""
    out = tmp_path / "run"
    report = sn.run(run_config, out)
    assert report["export"]["zeros_checked_layers"] == 14
    cfg = sn.load_config(run_config)
    model, sparse, sub = cfg.model, out / "sparse_model", out / "sub_adapter"
    for i in range(2):
        assert sn.prune(model, tmp_path / f"sparse{i}", cfg.compression)["sparsity"] == pytest.approx(0.5)
        assert sn.train(str(sparse), tmp_path / f"super{i}", cfg.nls, cfg.training)["max_steps"] == 4
        search = sn.search(
            str(sparse), out / "super_adapter", tmp_path / f"sub{i}", sn.SearchConfig(strategy="heuristic", limit=4)
        )
        assert search["num_evaluations"] == 1
        export = sn.export(sparse, tmp_path / f"ir{i}", adapter=sub, config=cfg.export)
        assert export["zeros_checked_layers"] == 14
        bench = sn.bench(tmp_path / f"ir{i}", config=sn.BenchConfig(prompt_len=4, new_tokens=2, repeats=1))
        assert bench["kernels"]
        ev = sn.evaluate(str(sparse), sn.EvalConfig(tasks=["SingleEq"], limit=2, max_new_tokens=4), adapter=str(sub))
        assert ev["tasks"]["SingleEq"]["total"] == 2
        (gen,) = sn.generate(tmp_path / f"ir{i}", ["What is 1 plus 1?"], max_new_tokens=3)
        assert isinstance(gen["text"], str)
    assert all(callable(getattr(sn, n)) for n in STAGES)


# ------------------------------------------------------------------------------------------ in memory


def _nls(widths=(8, 6, 4)):
    return sn.NLSConfig(
        elasticity=sn.ElasticityConfig(groups=[["q_proj", "k_proj", "v_proj"], ["up_proj"]], ranks=[list(widths)] * 2),
        lora=sn.LoraSettings(lora_alpha=16, lora_dropout=0.0),
    )


def test_nls_callback_trains_in_a_stock_trainer_the_draws_of_the_sampler(tmp_path):
    """A stock ``transformers.Trainer`` with ``NLSCallback``: each micro-batch's forward sees exactly the sub-adapter
    the sampler draws for (step, micro-batch), and only the adapter's parameters change."""
    from transformers import Trainer, TrainingArguments

    from shears_nncf.training import NLSSampler

    model, _ = make_model("llama", seed=1)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model, controller = sn.add_elastic_lora(model, _nls())
    sampler = NLSSampler(controller.space, seed=7)
    seen = []
    peft_model.register_forward_pre_hook(lambda module, args: seen.append(dict(controller.active_config)))
    ids = torch.randint(3, 300, (16, 12))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        dataloader_drop_last=True,
    )
    Trainer(model=peft_model, args=args, train_dataset=data, callbacks=[sn.NLSCallback(controller, sampler)]).train()
    expected = [sampler.configs(step, micro)[0] for step in range(3) for micro in range(2)]
    assert seen == expected and len({json.dumps(c, sort_keys=True) for c in seen}) > 1
    for name, p in peft_model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name.replace(".base_layer", "")]), name
    with pytest.raises(sn.ShearsError, match="needs NLSTrainer"):
        sn.NLSCallback(controller, NLSSampler(controller.space, sampling="sandwich"))


def test_select_subadapter_in_memory_finds_the_best_of_a_known_score():
    """Hill-climbing on a score whose optimum is known (the minimal ranks except one group at its largest)."""
    model, _ = make_model("llama", seed=2)
    _, controller = sn.add_elastic_lora(model, _nls())
    space = controller.space
    target = dict(space.minimal()) | {space.groups[0].name: 8}

    def score(config):
        return sum(abs(config[g] - target[g]) for g in config)

    result, scorer = sn.select_subadapter(space, score, sn.SearchConfig(strategy="hill-climbing", budget=40))
    assert result.best.config == target and result.best.score == 0
    assert {ev.source for ev in scorer.history} >= {"strategy", "reference"}
    fixed, _ = sn.select_subadapter(space, score, sn.SearchConfig(strategy="minimal"))
    assert fixed.best.config == space.minimal()


def test_to_openvino_and_quantize_in_memory_keep_the_zeros_and_the_adapter(tmp_path):
    """Model in, model out: the float IR of a sparse model + LoRA folder follows torch, W8A8 keeps every zero."""
    import openvino as ov
    from peft import LoraConfig, PeftModel, get_peft_model

    from shears_nncf.calibration import as_nncf_dataset
    from shears_nncf.ir import check_zeros_preserved, ir_inputs, ir_layers

    model, tokenizer = make_model("llama", seed=3)
    ids = np.array([[1, 17, 42, 99, 5, 230]])
    masks = {}
    for name, lin in model.named_modules():
        if isinstance(lin, torch.nn.Linear) and ".layers." in name:
            with torch.no_grad():
                lin.weight[:, ::2] = 0
            masks[name] = np.packbits((lin.weight == 0).numpy(), axis=None)
    peft_model = get_peft_model(
        make_model("llama", seed=3)[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():  # on a copy: the export injects the adapter into the model it is given
        ref = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path / "adapter")(
            input_ids=torch.tensor(ids)
        ).logits.numpy()
    ir = sn.to_openvino(model, tokenizer, sn.ExportConfig(quantize="none"), adapter=tmp_path / "adapter")
    assert isinstance(ir, ov.Model)
    got = (
        ov.Core()
        .compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        .create_infer_request()
        .infer(ir_inputs(ids))["logits"]
    )
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    config = sn.ExportConfig(quantize="w8a8", nsamples=8, seqlen=32)
    dataset = as_nncf_dataset(tokenizer, CALIBRATION, 8, 32, 0, transform_fn=lambda t: ir_inputs(t.numpy()))
    quantized = sn.quantize(ir, dataset, config)
    layers = ir_layers(quantized)
    assert check_zeros_preserved(layers, masks) == len(masks) == 14
    down = [k for k in layers if k.endswith("down_proj")]
    assert down and all(layers[k]["activations"] == "float" for k in down + ["lm_head"])
    assert layers["model.layers.0.self_attn.k_proj"]["activations"] == "int8"
