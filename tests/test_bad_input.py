"""Bad input is refused cleanly (one error line, exit 2, nothing written) and inputs never run code."""

import json
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny

from shears_nncf.cli import main

REPO = Path(__file__).resolve().parents[1]

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
    """The one line the user is told; progress bars of work done before the error (loading weights) are not lines."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_config_file_cannot_switch_on_remote_code(planted, tmp_path, capsys):
    folder, marker = planted
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps({"trust_remote_code": True, "compression": [{"algorithm": "magnitude", "sparsity_level": 0.5}]})
    )
    out = tmp_path / "out"
    for argv in (
        ["prune", "--model", str(folder), "--output", str(out), "--config", str(cfg)],
        ["run", "--config", str(cfg), "--output", str(out)],
    ):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert "trust_remote_code" in line and "--trust-remote-code" in line
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("stage", ["prune", "export"])
def test_remote_code_stays_off_without_the_flag(planted, tmp_path, capsys, stage):
    folder, marker = planted
    out = tmp_path / "out"
    argv = {
        "prune": ["prune", "--model", str(folder), "--output", str(out), "--method", "magnitude"],
        "export": ["export", "--model", str(folder), "--output", str(out), "--quantize", "none"],
    }[stage]
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
    argv = ["eval", "--model", str(tiny_llama), "--adapter", str(adapter)]
    argv += ["--tasks", "boolq=" + str(tmp_path / "x.json"), "--output", str(out)]
    assert main(argv) == 2
    assert "does not exist" in one_error_line(capsys)  # the data file is checked first
    (tmp_path / "x.json").write_text(
        json.dumps([{"instruction": "Is it?", "input": "", "output": "true", "answer": "true"}])
    )
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "adapter_model.safetensors" in line and "pickle" in line
    assert not out.exists()


# ------------------------------------------------------------------------------ module patterns and files


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"ignored_scopes": ["lm_haed"]}, "ignored_scopes entry 'lm_haed' matches no Linear"),
        ({"ignored_scopes": ["dwon_proj"]}, "ignored_scopes entry 'dwon_proj' matches no Linear"),
        ({"ignored_scopes": ["[unclosed"]}, "'[unclosed' is not a valid regular expression"),
        ({"target_modules": ["q_proj", "dwon_proj"]}, "target_modules entry 'dwon_proj' matches no Linear"),
    ],
)
def test_prune_pattern_typos_are_errors(tiny_llama, tmp_path, capsys, section, needle):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"compression": [{"algorithm": "magnitude", "sparsity_level": 0.5, **section}]}))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["prune", "--model", str(tiny_llama), "--output", str(out), "--config", str(cfg)]) == 2
    assert needle in one_error_line(capsys)
    assert not out.exists()


def test_train_lora_target_typo_is_an_error(tiny_llama, tmp_path, capsys):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a"}] * 8))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "bootstrapNAS": {
                    "training": {
                        "lora": {"target_modules": ["q_proj", "o_prj"]},
                        "elasticity": {"lora_rank": {"groups": [["q_proj"]], "widths": [4, 2]}},
                    }
                },
                "training": {"data": [str(data)], "max_steps": 1, "val_set_size": 2},
            }
        )
    )
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["train", "--model", str(tiny_llama), "--config", str(cfg), "--output", str(out)]) == 2
    assert "lora.target_modules entry 'o_prj' matches no Linear" in one_error_line(capsys)
    assert not out.exists()


NOT_UTF8 = b"\xff\xfe\x00bad \xc3\x28 bytes"


@pytest.mark.parametrize("kind", ["config", "calibration", "data", "eval-data"])
def test_non_utf8_files_are_one_error(tiny_llama, tmp_path, capsys, kind):
    bad = tmp_path / ("bad.jsonl" if kind != "config" else "bad.json")
    bad.write_bytes(NOT_UTF8)
    out = tmp_path / "out"
    argv = {
        "config": ["prune", "--model", str(tiny_llama), "--output", str(out), "--config", str(bad)],
        "calibration": [
            "prune",
            "--model",
            str(tiny_llama),
            "--output",
            str(out),
            "--calibration",
            str(bad),
            "--seqlen",
            "32",
        ],
        "data": [
            "train",
            "--model",
            str(tiny_llama),
            "--config",
            str(REPO / "configs/smollm2_135m_gsm8k.json"),
            "--data",
            str(bad),
            "--output",
            str(out),
        ],
        "eval-data": ["eval", "--model", str(tiny_llama), "--tasks", f"boolq={bad}", "--output", str(out)],
    }[kind]
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "is not UTF-8 text" in line and str(bad) in line
    assert not out.exists()


def test_a_folder_where_a_file_is_meant(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["prune", "--model", str(tiny_llama), "--output", str(out), "--config", str(tmp_path)]) == 2
    assert "is a folder; pass a file" in one_error_line(capsys)


# --------------------------------------------------------------------------------- outputs, weights, IRs


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A tiny Llama, a LoRA adapter for it, one for a different-shaped model, and its fp32 IR."""
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_model

    from shears_nncf.config import ExportConfig
    from shears_nncf.exporting import export

    root = tmp_path_factory.mktemp("bad")
    model_dir = save_tiny(root / "model")
    for name, kw in (("adapter", {}), ("wide_adapter", {"hidden_size": 128})):
        model, _ = make_model("llama", **kw)
        get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(root / name)
    export(model_dir, root / "ir", config=ExportConfig(quantize="none"))
    from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig
    from shears_nncf.elastic import add_elastic_lora

    nls = NLSConfig(elasticity=ElasticityConfig(groups=[["q_proj", "v_proj"]], ranks=[[4, 2]]), lora=LoraSettings())
    _, elastic = add_elastic_lora(make_model("llama")[0], nls)
    elastic.space.save(root)  # elastic_config.json for the super-adapter copies
    records = [
        {"instruction": "Is the sky blue?", "input": "", "output": "the correct answer is true", "answer": "true"}
    ] * 2
    (root / "boolq.json").write_text(json.dumps(records))
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CASES = {
    # name: (argv with placeholders, expected text in the error line)
    "prune-output-is-a-file": (
        ["prune", "--model", "{model}", "--output", "{file}", "--method", "magnitude"],
        "is an existing file",
    ),
    "prune-output-under-a-file": (
        ["prune", "--model", "{model}", "--output", "{file}/sub", "--method", "magnitude"],
        "cannot write the output folder",
    ),
    "export-output-is-a-file": (
        ["export", "--model", "{model}", "--output", "{file}", "--quantize", "none"],
        "is an existing file",
    ),
    "merge-unmasked-adapter": (
        ["merge", "--model", "{model}", "--adapter", "{adapter}", "--output", "{out}"],
        "not trained sparsity-masked",
    ),
    "run-output-is-a-file": (
        ["run", "--config", "{runcfg}", "--output", "{file}", "--to", "prune"],
        "is an existing file",
    ),
    "bench-json-under-a-file": (["bench", "{ir}", "--json", "{file}/b.json"], "cannot write --json"),
    "eval-output-is-a-folder": (
        ["eval", "--model", "{model}", "--tasks", "boolq={boolq}", "--output", "{tmp}"],
        "is a folder",
    ),
    "eval-output-under-a-file": (
        ["eval", "--model", "{model}", "--tasks", "boolq={boolq}", "--output", "{file}/e.json"],
        "cannot write --output",
    ),
    "truncated-model-weights": (
        ["prune", "--model", "{truncated_model}", "--output", "{out}", "--method", "magnitude"],
        "cannot be read",
    ),
    "truncated-adapter-weights": (
        ["eval", "--model", "{model}", "--adapter", "{truncated_adapter}", "--tasks", "boolq={boolq}"],
        "cannot be read as safetensors",
    ),
    "eval-adapter-of-another-model": (
        ["eval", "--model", "{model}", "--adapter", "{wide_adapter}", "--tasks", "boolq={boolq}"],
        "trained for a different model",
    ),
    "export-adapter-of-another-model": (
        ["export", "--model", "{model}", "--adapter", "{wide_adapter}", "--output", "{out}"],
        "trained for a different model",
    ),
    "bench-ir-without-bin": (["bench", "{ir_no_bin}"], "cannot read the IR"),
    "bench-corrupt-xml": (["bench", "{ir_bad_xml}"], "cannot read the IR"),
    "eval-ir-corrupt-xml": (
        ["eval", "--model", "{model}", "--ir", "{ir_bad_xml}", "--tasks", "boolq={boolq}"],
        "cannot read the IR",
    ),
    "bench-prompt-too-long": (["bench", "{ir}", "--prompt-len", "1000000000"], "exceeds the model's 256 positions"),
    "eval-batch-size-0": (
        ["eval", "--model", "{model}", "--tasks", "boolq={boolq}", "--batch-size", "0"],
        "--batch-size must be",
    ),
    "eval-prompt-too-long": (
        ["eval", "--model", "{model}", "--tasks", "boolq={long}"],
        "exceeds the model's 256 positions",
    ),
    "missing-relative-model-path": (["prune", "--model", "{tmp}/no_such/model", "--output", "{out}"], "does not exist"),
    "missing-hub-shaped-path": (["prune", "--model", "nosuchdir/model", "--output", "{out}"], "does not exist"),
    "run-unknown-eval-task": (["run", "--config", "{badtask}", "--output", "{out}"], "unknown task 'hellaswag'"),
    "run-bad-prune-pattern": (
        ["run", "--config", "{badpattern}", "--output", "{out}", "--to", "prune"],
        "'dwon_proj' matches no Linear",
    ),
    # every sub-command: paths, bounds, values
    "prune-sparsity-out-of-range": (
        ["prune", "--model", "{model}", "--output", "{out}", "--sparsity", "1.5"],
        "must be a number in [0, 1), got 1.5",
    ),
    "prune-unknown-method": (
        ["prune", "--model", "{model}", "--output", "{out}", "--method", "sparsegtp"],
        "--method must be one of",
    ),
    "prune-nsamples-0": (
        ["prune", "--model", "{model}", "--output", "{out}", "--nsamples", "0"],
        "nsamples must be a positive",
    ),
    "prune-missing-calibration": (
        ["prune", "--model", "{model}", "--output", "{out}", "--calibration", "{tmp}/none.jsonl", "--seqlen", "32"],
        "is not a readable file",
    ),
    "train-output-is-a-file": (
        ["train", "--model", "{model}", "--config", "{traincfg}", "--output", "{file}"],
        "is a file",
    ),
    "train-missing-data": (
        ["train", "--model", "{model}", "--config", "{traincfg}", "--data", "{tmp}/none.json", "--output", "{out}"],
        "does not exist",
    ),
    "train-no-nls-section": (
        ["train", "--model", "{model}", "--config", "{runcfg}", "--output", "{out}"],
        "no bootstrapNAS.training section",
    ),
    "search-output-is-a-file": (
        ["search", "--model", "{model}", "--adapter", "{super}", "--output", "{file}"],
        "is an existing file",
    ),
    "search-adapter-of-another-model": (
        ["search", "--model", "{model}", "--adapter", "{wide_super}", "--output", "{out}"],
        "trained for a different model",
    ),
    "search-not-a-super-adapter": (
        ["search", "--model", "{model}", "--adapter", "{adapter}", "--output", "{out}"],
        "elastic_config.json",
    ),
    "search-budget-0": (
        ["search", "--model", "{model}", "--adapter", "{super}", "--output", "{out}", "--budget", "0"],
        "budget",
    ),
    "merge-output-is-a-file": (
        ["merge", "--model", "{model}", "--adapter", "{masked_adapter}", "--output", "{file}"],
        "is an existing file",
    ),
    "merge-missing-adapter": (
        ["merge", "--model", "{model}", "--adapter", "{tmp}/none", "--output", "{out}"],
        "not trained sparsity-masked",
    ),
    "export-sparse-rate-2": (
        ["export", "--model", "{model}", "--output", "{out}", "--sparse-rate", "2"],
        "--sparse-rate must be",
    ),
    "export-unknown-quantize": (
        ["export", "--model", "{model}", "--output", "{out}", "--quantize", "int3"],
        "--quantize must be one of",
    ),
    "export-unknown-precision": (
        ["export", "--model", "{model}", "--output", "{out}", "--inference-precision", "fp8"],
        "--inference-precision must be one of",
    ),
    "export-adapter-target-typo": (
        ["export", "--model", "{model}", "--adapter", "{typo_adapter}", "--output", "{out}"],
        "target_modules entry 'q_prj'",
    ),
    "export-pickle-adapter": (
        ["export", "--model", "{model}", "--adapter", "{pickle_adapter}", "--output", "{out}"],
        "pickle adapter files are not read",
    ),
    "search-strategy-not-utf8": (
        ["search", "--model", "{model}", "--adapter", "{super}", "--output", "{out}", "--strategy", "{notutf8}"],
        "is not UTF-8 text",
    ),
    "train-pickle-model": (
        ["train", "--model", "{pickle_model}", "--config", "{traincfg}", "--output", "{out}"],
        "only pickle weights",
    ),
    "export-pickle-model": (
        ["export", "--model", "{pickle_model}", "--output", "{out}", "--quantize", "none"],
        "only pickle weights",
    ),
    "bench-missing-ir": (["bench", "{tmp}/no_ir"], "does not exist"),
    "bench-threads-0": (["bench", "{ir}", "--threads", "0"], "--threads must be a positive integer"),
    "bench-new-tokens-0": (["bench", "{ir}", "--new-tokens", "0"], "--new-tokens must be a positive integer"),
    "eval-records-without-answer": (["eval", "--model", "{model}", "--tasks", "boolq={noanswer}"], "has no 'answer'"),
    "eval-unknown-task": (["eval", "--model", "{model}", "--tasks", "hellaswag"], "unknown task 'hellaswag'"),
    "eval-limit-0": (["eval", "--model", "{model}", "--tasks", "boolq={boolq}", "--limit", "0"], "--limit must be"),
    "run-unknown-stage": (["run", "--config", "{runcfg}", "--output", "{out}", "--from", "quantize"], "unknown stage"),
    "run-unknown-config-key": (["run", "--config", "{unknownkey}", "--output", "{out}"], "shrinkage"),
    "run-merge-without-sparse-adapter": (["run", "--config", "{mergecfg}", "--output", "{out}"], "export.merge needs"),
    "run-export-pattern-typo": (
        ["run", "--config", "{exporttypo}", "--output", "{out}"],
        "'lm_haed' matches no Linear",
    ),
    "run-group-pattern-typo": (
        ["run", "--config", "{grouptypo}", "--output", "{out}"],
        "group pattern 'q_prj' matches no module",
    ),
    "prune-seqlen-beyond-positions": (
        ["prune", "--model", "{model}", "--output", "{out}", "--seqlen", "4096"],
        "--seqlen 4096 exceeds the model's 256 positions",
    ),
    "export-seqlen-beyond-positions": (
        ["export", "--model", "{model}", "--output", "{out}", "--seqlen", "300"],
        "--seqlen 300 exceeds the model's 256 positions",
    ),
    # the deploy path (generate, bench --adapter, merge): checked before OpenVINO GenAI loads, no temporary folder left
    "generate-ir-without-detokenizer": (
        ["generate", "{ir_no_detok}", "--prompt", "hi"],
        "has no openvino_detokenizer.xml",
    ),
    "generate-peft-folder-of-another-model": (
        ["generate", "{ir}", "--prompt", "hi", "--adapter", "{wide_adapter}"],
        "trained for a different model",
    ),
    "generate-genai-file-of-another-model": (
        ["generate", "{ir}", "--prompt", "hi", "--adapter", "{wide_genai}"],
        "was made for another model",
    ),
    "bench-genai-file-of-another-model": (["bench", "{ir}", "--adapter", "{wide_genai}"], "was made for another model"),
    "generate-truncated-adapter-file": (
        ["generate", "{ir}", "--prompt", "hi", "--adapter", "{truncated_genai}"],
        "cannot be read as safetensors",
    ),
    "generate-adapter-matching-no-layer": (
        ["generate", "{ir}", "--prompt", "hi", "--adapter", "{foreign_genai}"],
        "match no layer of the IR",
    ),
    "generate-threads-0": (
        ["generate", "{ir}", "--prompt", "hi", "--threads", "0"],
        "--threads must be a positive integer",
    ),
    "generate-prompt-too-long": (
        ["generate", "{ir}", "--prompt", "word " * 400],
        "the model's context is 256 positions",
    ),
    "merge-forged-marker": (
        ["merge", "--model", "{model}", "--adapter", "{forged_adapter}", "--output", "{out}"],
        "was not written for this adapter's weights",
    ),
    # numbers: non-finite and absurd values are refused at the config boundary, flag or file, for every stage
    "prune-sparsity-nan": (
        ["prune", "--model", "{model}", "--output", "{out}", "--sparsity", "nan"],
        "not a finite number",
    ),
    "train-lr-nan": (
        ["train", "--model", "{model}", "--config", "{traincfg}", "--output", "{out}", "--lr", "nan"],
        "not a finite number",
    ),
    "train-lr-inf": (
        ["train", "--model", "{model}", "--config", "{traincfg}", "--output", "{out}", "--lr", "inf"],
        "not a finite number",
    ),
    "export-sparse-rate-nan": (
        ["export", "--model", "{model}", "--output", "{out}", "--sparse-rate", "nan"],
        "not a finite number",
    ),
    "prune-config-nan": (
        ["prune", "--model", "{model}", "--output", "{out}", "--config", "{nan_sparsity}"],
        "compression[0].sparsity_level got nan",
    ),
    "run-config-infinity": (["run", "--config", "{inf_lr}", "--output", "{out}"], "training.learning_rate got inf"),
    "export-config-nan-alpha": (
        ["export", "--model", "{model}", "--output", "{out}", "--config", "{nan_alpha}"],
        "export.advanced.smooth_quant_alpha got nan",
    ),
    "run-config-5000-digits": (["run", "--config", "{digits}", "--output", "{out}"], "absurd number"),
    "run-config-deeply-nested": (["run", "--config", "{nested}", "--output", "{out}"], "nests too deeply"),
    "run-config-nested-deeper-than-32": (
        ["run", "--config", "{nested40}", "--output", "{out}"],
        "nests deeper than 32",
    ),
}

#: config files written as text: JSON's NaN / Infinity tokens, a 5000-digit integer, absurd nesting
RAW_CONFIGS = {
    "nan_sparsity": '{"compression": [{"algorithm": "magnitude", "sparsity_level": NaN}]}',
    "inf_lr": '{"model": "{model}", "training": {"learning_rate": Infinity}}',
    "nan_alpha": '{"export": {"advanced": {"smooth_quant_alpha": NaN}}}',
    "digits": '{"model": "{model}", "training": {"seed": ' + "9" * 5000 + "}}",
    "nested": '{"input_info": ' + "[" * 100000 + "]" * 100000 + "}",
    "nested40": '{"input_info": {"a": ' + '{"a": ' * 40 + "1" + "}" * 41 + "}",
}


def _genai_places(argv: str, artefacts: Path, tmp_path: Path, places: dict) -> None:
    """Run-time adapter files that GenAI would apply wrongly or stop on: of a wider model, truncated, of no layer."""
    from safetensors.torch import load_file, save_file

    if "{ir_no_detok}" in argv:
        places["ir_no_detok"] = copy_tree(artefacts / "ir", tmp_path / "ir3")
        for name in ("openvino_detokenizer.xml", "openvino_detokenizer.bin"):
            (places["ir_no_detok"] / name).unlink()
    tensors = load_file(artefacts / "wide_adapter" / "adapter_model.safetensors")
    if "{wide_genai}" in argv:
        save_file(tensors, tmp_path / "wide.safetensors")
        places["wide_genai"] = tmp_path / "wide.safetensors"
    if "{truncated_genai}" in argv:
        save_file(load_file(artefacts / "adapter" / "adapter_model.safetensors"), tmp_path / "cut.safetensors")
        truncate(tmp_path / "cut.safetensors")
        places["truncated_genai"] = tmp_path / "cut.safetensors"
    if "{foreign_genai}" in argv:
        foreign = {k.replace("self_attn", "attention"): v for k, v in tensors.items()}
        save_file(foreign, tmp_path / "foreign.safetensors")
        places["foreign_genai"] = tmp_path / "foreign.safetensors"
    if "{forged_adapter}" in argv:  # a plain adapter with a hand-written marker
        places["forged_adapter"] = copy_tree(artefacts / "adapter", tmp_path / "forged")
        (places["forged_adapter"] / "sparse_adapter.json").write_text(json.dumps({"masked_update": True}))
    for name, text in RAW_CONFIGS.items():
        if "{%s}" % name in argv:
            places[name] = tmp_path / f"{name}.json"
            places[name].write_text(text.replace("{model}", str(artefacts / "model")))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line_and_nothing_written(case, artefacts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, needle = CASES[case]
    file = tmp_path / "a_file"
    file.write_text("x")
    places = {
        "model": artefacts / "model",
        "adapter": artefacts / "adapter",
        "wide_adapter": artefacts / "wide_adapter",
        "ir": artefacts / "ir",
        "boolq": artefacts / "boolq.json",
        "file": file,
        "tmp": tmp_path,
        "out": tmp_path / "out",
    }
    if "{truncated_model}" in " ".join(argv):
        places["truncated_model"] = copy_tree(artefacts / "model", tmp_path / "tm")
        truncate(places["truncated_model"] / "model.safetensors")
    if "{truncated_adapter}" in " ".join(argv):
        places["truncated_adapter"] = copy_tree(artefacts / "adapter", tmp_path / "ta")
        truncate(places["truncated_adapter"] / "adapter_model.safetensors")
    if "{ir_no_bin}" in " ".join(argv):
        places["ir_no_bin"] = copy_tree(artefacts / "ir", tmp_path / "ir1")
        (places["ir_no_bin"] / "openvino_model.bin").unlink()
    if "{ir_bad_xml}" in " ".join(argv):
        places["ir_bad_xml"] = copy_tree(artefacts / "ir", tmp_path / "ir2")
        (places["ir_bad_xml"] / "openvino_model.xml").write_text("<net><layers")
    if "{long}" in " ".join(argv):
        places["long"] = tmp_path / "long.json"
        places["long"].write_text(
            json.dumps([{"instruction": "word " * 400, "input": "", "output": "x", "answer": "true"}])
        )
    if "{masked_adapter}" in " ".join(argv):
        from shears_nncf.adapters import mark_masked

        places["masked_adapter"] = copy_tree(artefacts / "adapter", tmp_path / "masked")
        mark_masked(places["masked_adapter"])
    if "{notutf8}" in " ".join(argv):
        places["notutf8"] = tmp_path / "strategy.json"
        places["notutf8"].write_bytes(NOT_UTF8)
    if "{pickle_model}" in " ".join(argv):
        from safetensors.torch import load_file

        places["pickle_model"] = copy_tree(artefacts / "model", tmp_path / "pm")
        torch.save(
            load_file(places["pickle_model"] / "model.safetensors"), places["pickle_model"] / "pytorch_model.bin"
        )
        (places["pickle_model"] / "model.safetensors").unlink()
    if "{noanswer}" in " ".join(argv):
        places["noanswer"] = tmp_path / "noanswer.json"
        places["noanswer"].write_text(json.dumps([{"instruction": "Is it?", "input": "", "output": "true"}]))
    for name, edit_config in (("typo_adapter", {"target_modules": ["q_prj", "v_proj"]}), ("pickle_adapter", None)):
        if "{%s}" % name in " ".join(argv):
            places[name] = copy_tree(artefacts / "adapter", tmp_path / name)
            if edit_config:
                cfg = json.loads((places[name] / "adapter_config.json").read_text())
                (places[name] / "adapter_config.json").write_text(json.dumps({**cfg, **edit_config}))
            else:
                (places[name] / "adapter_model.safetensors").rename(places[name] / "adapter_model.bin")
    for name, adapter in (("super", "adapter"), ("wide_super", "wide_adapter")):  # an elastic super-adapter folder
        places[name] = copy_tree(artefacts / adapter, tmp_path / name)
        (places[name] / "elastic_config.json").write_text((artefacts / "elastic_config.json").read_text())
        (places[name] / "validation.jsonl").write_text(
            json.dumps({"instruction": "q", "input": "", "output": "a"}) + "\n"
        )
    nls = {"training": {"elasticity": {"lora_rank": {"groups": [["q_proj", "v_proj"]], "widths": [4, 2]}}}}
    base = {"model": str(artefacts / "model"), "export": {"quantize": "none"}}
    for name, extra in (
        ("runcfg", {}),
        ("badtask", {"eval": {"tasks": ["hellaswag"]}}),
        (
            "badpattern",
            {"compression": [{"algorithm": "magnitude", "sparsity_level": 0.5, "ignored_scopes": ["dwon_proj"]}]},
        ),
        ("traincfg", {"bootstrapNAS": nls, "training": {"data": [str(artefacts / "boolq.json")]}}),
        ("unknownkey", {"shrinkage": 1}),
        ("mergecfg", {"bootstrapNAS": nls, "export": {"merge": True}}),
        ("exporttypo", {"export": {"quantize": "w8a8", "ignored_scopes": ["lm_haed"]}}),
        (
            "grouptypo",
            {
                "bootstrapNAS": {"training": {"elasticity": {"lora_rank": {"groups": [["q_prj"]], "widths": [4]}}}},
                "training": {"data": [str(artefacts / "boolq.json")]},
            },
        ),
    ):
        places[name] = tmp_path / f"{name}.json"
        places[name].write_text(json.dumps({**base, **extra}))
    _genai_places(" ".join(argv), artefacts, tmp_path, places)
    argv = [a.format(**{k: str(v) for k, v in places.items()}) for a in argv]
    before, temp_before = set(tmp_path.rglob("*")), _genai_temp()
    capsys.readouterr()
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert needle in line, line
    assert not (tmp_path / "out").exists()
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even a probe file
    assert file.read_text() == "x"
    assert _genai_temp() == temp_before  # no shears-genai-* folder left in the temporary folder


def _genai_temp() -> set:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("shears-genai-*"))


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate"], "the following arguments are required: ir"),
        (["prune", "--model", "m", "--output", "o", "--seed", "9" * 5000], "invalid int value"),
        (["bench", "ir", "--threads", "many"], "invalid int value: 'many'"),
    ],
)
def test_an_argparse_error_is_one_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    line = one_error_line(capsys)
    assert needle in line and line.startswith("shears-nncf")


def test_generate_refuses_non_utf8_standard_input(artefacts, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(NOT_UTF8)))
    assert main(["generate", str(artefacts / "ir")]) == 2
    assert "standard input is not UTF-8 text (byte 0" in one_error_line(capsys)


def test_a_failing_run_leaves_no_config_behind(artefacts, tmp_path, capsys):
    """The stage fails after the run started (its data has no usable record): the output folder gets no config."""
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "q", "input": "", "output": ""}] * 4))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "model": str(artefacts / "model"),
                "training": {"data": [str(data)], "max_steps": 1},
                "bootstrapNAS": {"training": {"elasticity": {"lora_rank": {"groups": [["q_proj"]], "widths": [4]}}}},
            }
        )
    )
    for out in (tmp_path / "new", tmp_path / "existing"):
        if out.name == "existing":
            out.mkdir()
        assert main(["run", "--config", str(cfg), "--output", str(out), "--to", "train"]) == 2
        assert "has an empty output" in one_error_line(capsys)  # in the train stage, after the run began
        assert not (out / "shears_config.json").exists()
        assert out.exists() == (out.name == "existing")


def test_ctrl_c_during_export_is_one_line(artefacts, tmp_path, monkeypatch, capsys):
    import shears_nncf.exporting as exporting

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporting, "quantize", interrupted)
    capsys.readouterr()
    argv = ["export", "--model", str(artefacts / "model"), "--output", str(tmp_path / "out"), "--quantize", "none"]
    assert main(argv) == 130
    assert one_error_line(capsys) == "shears-nncf export: interrupted"
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
