"""NLS training with the transformers Trainer on a tiny sparse Llama: outputs, determinism, resume, DDP, errors."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from report_shapes import assert_report_shape
from safetensors.torch import load_file
from tiny_models import make_model
from transformers import TrainerCallback

from shears_nncf.cli import main
from shears_nncf.config import ElasticityConfig, LoraSettings, NLSConfig, TrainingConfig
from shears_nncf.datasets import load_instruction_data, load_validation
from shears_nncf.elastic import ElasticLoraA, SearchSpace, load_elastic_lora
from shears_nncf.errors import ShearsError
from shears_nncf.reports import TrainingReport
from shears_nncf.training import GROUP_STEPS, NLSSampler, StepGroupedSampler, train

WIDTHS = [8, 6, 4]
GROUPS = [["q_proj", "k_proj", "v_proj"], ["up_proj"], ["down_proj"]]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: extra threads only contend on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sparse_model(tmp_path_factory) -> Path:
    """A tiny Llama with half of every block projection zeroed per row, as stage 1 leaves it."""
    model, tok = make_model("llama", seed=0)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and ".layers." in name:
                k = m.weight.shape[1] // 2
                idx = m.weight.abs().argsort(dim=1)[:, :k]
                m.weight.scatter_(1, idx, 0.0)
    path = tmp_path_factory.mktemp("sparse") / "llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    records = [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": "" if i % 3 else "numbers",
            "output": f"The answer is {2 * i + 1}.",
        }
        for i in range(44)
    ]
    path = tmp_path_factory.mktemp("data") / "train.json"
    path.write_text(json.dumps(records))
    return path


def _configs(data_file, lora_dropout=0.0, sampling="uniform", **training):
    nls = NLSConfig(
        elasticity=ElasticityConfig(groups=GROUPS, ranks=[WIDTHS] * 3),
        lora=LoraSettings(lora_alpha=16, lora_dropout=lora_dropout),
        sampling=sampling,
    )
    kw = dict(
        data=[str(data_file)],
        batch_size=4,
        grad_accum=2,
        max_steps=4,
        save_steps=3,
        warmup_steps=2,
        logging_steps=1,
        val_set_size=4,
        cutoff_len=128,
        learning_rate=1e-2,
        seed=7,
    )
    kw.update(training)
    return nls, TrainingConfig(**kw)


class Capture(TrainerCallback):
    """Keeps the model the Trainer trained, to inspect it after ``train`` returns."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


class StopAt(TrainerCallback):
    """Simulates a crash when the optimizer step ``step`` begins."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_train_writes_a_peft_super_adapter_and_keeps_the_base_frozen(sparse_model, data_file, tmp_path):
    from peft import PeftConfig, PeftModel

    nls, training = _configs(data_file)
    out = tmp_path / "super"
    cap = Capture()
    report = train(str(sparse_model), out, nls, training, callbacks=[cap])

    # a stock PEFT folder with r = max width, the search space, the held-out records, the report, checkpoints
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "elastic_config.json",
        "validation.jsonl",
        "training_report.json",
        "checkpoint-3",
        "checkpoint-4",
    ):
        assert (out / name).exists(), name
    assert PeftConfig.from_pretrained(str(out)).r == 8
    ckpt_files = {p.name for p in (out / "checkpoint-3").iterdir()}
    assert "adapter_model.safetensors" in ckpt_files and not ckpt_files & {"adapter_model.bin", "pytorch_model.bin"}
    assert json.loads((out / "training_report.json").read_text()) == json.loads(json.dumps(report))
    assert_report_shape(report, TrainingReport)

    # base weights (and so the zeros of stage 1) are bit-identical to the saved sparse model
    saved = load_file(str(sparse_model / "model.safetensors"))
    trained = {
        k.removeprefix("base_model.model.").replace(".base_layer.", "."): v
        for k, v in cap.model.state_dict().items()
        if "lora_" not in k
    }
    assert set(saved) <= set(trained)
    for k, v in saved.items():
        assert torch.equal(trained[k], v), k
    zeros = [k for k, v in saved.items() if ".layers." in k and v.dim() == 2]
    assert zeros and all(torch.equal(trained[k] == 0, saved[k] == 0) for k in zeros)

    # the adapter learnt (LoRA B starts at zero) and loads back with stock PEFT and as an elastic adapter
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    base, _ = make_model("llama")
    stock = PeftModel.from_pretrained(base, str(out))
    assert stock.get_base_model().model.layers[1].mlp.down_proj.lora_B["default"].weight.shape[1] == 8
    _, ctl = load_elastic_lora(make_model("llama")[0], out)
    assert ctl.space == SearchSpace.load(out)

    # the validation split is the seeded one, and never trained on
    train_recs, val_recs = load_instruction_data([str(data_file)], 4, seed=7)
    assert load_validation(out) == val_recs and not {r["instruction"] for r in val_recs} & {
        r["instruction"] for r in train_recs
    }

    # loss curve and warmup: lr of step k (0-based) is lr * k / warmup, then decays linearly to 0 at max_steps
    curve = report["loss_curve"]
    assert [e["step"] for e in curve] == [1, 2, 3, 4] and all(e["loss"] > 0 for e in curve)
    expected = [1e-2 * k / 2 if k < 2 else 1e-2 * (4 - k) / (4 - 2) for k in range(4)]
    assert [e["learning_rate"] for e in curve] == pytest.approx(expected)
    assert curve[0]["learning_rate"] == 0

    # the histogram counts one pass per micro-batch; trainable params are the LoRA ones
    hist = report["sampled_configs"]
    assert hist["passes"] == 4 * 2 and len(hist["per_group"]) == 6 and set(hist["all_groups"]) == {"8", "6", "4"}
    assert all(sum(c.values()) == 8 for c in hist["per_group"].values())
    assert report["trainable_params"] == ctl.space.adapter_params(ctl.space.maximal())
    assert report["batch"] == {"batch_size": 4, "micro_batch": 2, "grad_accum": 2, "world_size": 1, "global_batch": 4}


def test_sampler_is_a_deterministic_function_of_seed_and_step():
    space = SearchSpace.from_dict(json.loads(json.dumps(_space_dict())))
    s = NLSSampler(space, seed=3)
    draws = [s.configs(step, micro)[0] for step in range(30) for micro in range(2)]
    assert draws == [NLSSampler(space, seed=3).configs(step, micro)[0] for step in range(30) for micro in range(2)]
    assert draws != [NLSSampler(space, seed=4).configs(step, micro)[0] for step in range(30) for micro in range(2)]
    assert len({tuple(d.values()) for d in draws}) > 20  # varies across steps
    for g in space.groups:  # and covers every width of every group
        assert {d[g.name] for d in draws} == set(WIDTHS)
    per_step = NLSSampler(space, sample_every="step", seed=3)
    assert all(per_step.configs(k, 0) == per_step.configs(k, 1) for k in range(10))
    sandwich = NLSSampler(space, sampling="sandwich", seed=3).configs(5, 1)
    assert sandwich == [space.maximal(), space.minimal(), s.configs(5, 1)[0]]


class RecordBatches(TrainerCallback):
    """The token count of every record in every micro-batch, and the model's parameter dtypes."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.lengths, self.model = [], model
        model.register_forward_pre_hook(
            lambda m, a, kw: self.lengths.append(kw["attention_mask"].sum(1).tolist()), with_kwargs=True
        )


def test_bf16_length_grouped_training_keeps_zeros_and_pads_less(sparse_model, tmp_path):
    """bf16: a bf16 base (zeros intact), an f32 adapter; group_by_length: micro-batches of similar length."""
    records = [
        {"instruction": "Repeat the word. " * (1 + (7 * i) % 13), "input": "", "output": "word " * (1 + (5 * i) % 11)}
        for i in range(44)
    ]
    data = _write(tmp_path / "varied.json", records)
    runs = {}
    for grouped in (False, True):
        rec = RecordBatches()
        nls, training = _configs(data, max_steps=4, save_steps=10, bf16=True, group_by_length=grouped)
        train(str(sparse_model), tmp_path / f"g{grouped}", nls, training, callbacks=[rec])
        runs[grouped] = rec
    padded = {g: sum(max(b) * len(b) for b in r.lengths) for g, r in runs.items()}
    assert padded[True] < padded[False]
    model = runs[True].model
    base = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    assert {p.dtype for p in base.values()} == {torch.bfloat16}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    saved = load_file(str(sparse_model / "model.safetensors"))
    for k, v in saved.items():
        if ".layers." in k and v.dim() == 2:
            name = "base_model.model." + k.replace(".weight", ".base_layer.weight")
            w = base.get(name, base.get("base_model.model." + k))
            assert torch.equal(w == 0, v == 0), k
    assert {v.dtype for v in load_file(str(tmp_path / "gTrue" / "adapter_model.safetensors")).values()} == {
        torch.float32
    }


def test_step_grouped_sampler_sorts_within_a_few_steps_and_samples_uniformly():
    lengths = [(37 * i) % 101 for i in range(200)]
    batch = 4
    mega = GROUP_STEPS * batch
    order = list(StepGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(1)))
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1)).tolist()
    assert sorted(order) == list(range(200))
    differ = []
    for k in range(0, 200, mega):  # each mega-batch: the random order's records, longest first
        got, want = set(order[k : k + mega]), set(perm[k : k + mega])
        if got != want:
            differ.append(len(got - want))
        chunk = [lengths[i] for i in order[k : k + mega]]
        assert chunk[1:] == sorted(chunk[1:], reverse=True)
    assert differ in ([], [1, 1])  # HF swaps the overall longest record into the first place (one exchange)


def _space_dict():
    groups = [
        {"name": f"model.layers.{b}.{'+'.join(g)}", "modules": [f"model.layers.{b}.{m}" for m in g], "widths": WIDTHS}
        for b in range(2)
        for g in GROUPS
    ]
    shapes = {m: [64, 64] for g in groups for m in g["modules"]}
    return {"groups": groups, "max_rank": 8, "lora_alpha": 16.0, "module_shapes": shapes}


def test_gradient_checkpointing_recompute_sees_the_forward_rank(sparse_model, data_file, tmp_path):
    class RecordRanks(TrainerCallback):
        calls: list = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            a = model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"]
            assert isinstance(a, ElasticLoraA)
            a.register_forward_hook(lambda m, inp, out: self.calls.append((m.active_rank, out.shape[-1])))

    rec = RecordRanks()
    nls, training = _configs(data_file, gradient_checkpointing=True, max_steps=4, save_steps=10)
    train(str(sparse_model), tmp_path / "gc", nls, training, callbacks=[rec])
    calls = rec.calls
    assert len(calls) == 2 * 4 * 2  # forward + recompute for each of 8 micro-batches
    assert all(rank == width for rank, width in calls)
    forward, recompute = calls[0::2], calls[1::2]
    assert forward == recompute
    assert len({r for r, _ in forward}) > 1  # the sampled rank changed between micro-batches


def test_resumed_run_ends_with_the_uninterrupted_adapter(sparse_model, data_file, tmp_path, capsys):
    nls, training = _configs(data_file, lora_dropout=0.1, max_steps=6, save_steps=3)
    straight = train(str(sparse_model), tmp_path / "straight", nls, training)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(str(sparse_model), tmp_path / "resumed", nls, training, callbacks=[StopAt(3)])
    assert (tmp_path / "resumed" / "checkpoint-3").is_dir()  # kept for --resume
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()

    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "bootstrapNAS": {
                    "training": {
                        "lora": {"lora_alpha": 16, "lora_dropout": 0.1},
                        "elasticity": {"lora_rank": {"groups": GROUPS, "widths": WIDTHS}},
                    }
                },
                "training": {
                    "batch_size": 4,
                    "grad_accum": 2,
                    "save_steps": 3,
                    "warmup_steps": 2,
                    "logging_steps": 1,
                    "val_set_size": 4,
                    "cutoff_len": 128,
                    "learning_rate": 1e-2,
                },
            }
        )
    )
    rc = main(
        [
            "-q",
            "train",
            "--model",
            str(sparse_model),
            "--config",
            str(cfg),
            "--data",
            str(data_file),
            "--output",
            str(tmp_path / "resumed"),
            "--max-steps",
            "6",
            "--seed",
            "7",
            "--resume",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    a = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    resumed = json.loads((tmp_path / "resumed" / "training_report.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6
    assert resumed["sampled_configs"] == straight["sampled_configs"]  # the histogram carried over the restart
    assert [e["loss"] for e in resumed["loss_curve"]] == pytest.approx([e["loss"] for e in straight["loss_curve"]])


def test_sandwich_trains_maximal_minimal_and_random_each_micro_batch(sparse_model, data_file, tmp_path):
    nls, training = _configs(data_file, sampling="sandwich", max_steps=2, save_steps=10)
    report = train(str(sparse_model), tmp_path / "sw", nls, training)
    hist = report["sampled_configs"]
    assert hist["passes"] == 3 * 2 * 2
    for counts in hist["per_group"].values():
        assert counts["8"] >= 4 and counts["4"] >= 4 and sum(counts.values()) == 12
    assert all(e["loss"] == e["loss"] and e["loss"] > 0 for e in report["loss_curve"])  # finite, averaged


def test_failure_before_the_first_checkpoint_leaves_no_folder(sparse_model, data_file, tmp_path):
    nls, training = _configs(data_file)
    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(str(sparse_model), out, nls, training, callbacks=[StopAt(1)])
    assert not out.exists()
    with pytest.raises(ShearsError, match="no checkpoint-N folder"):
        train(str(sparse_model), out, nls, training, resume=True)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ShearsError, match="exists and is not empty; pass --resume"):
        train(str(sparse_model), out, nls, training)


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _cfg(lora_rank=None, lora=None, dims=None):
    el = {"lora_rank": lora_rank or {"groups": GROUPS, "widths": WIDTHS}}
    if dims:
        el["available_elasticity_dims"] = dims
    return {
        "bootstrapNAS": {"training": {"lora": lora or {"lora_alpha": 16}, "elasticity": el}},
        "training": {"batch_size": 4, "grad_accum": 2, "val_set_size": 2},
    }


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty_data", "is empty"),
        ("no_output", "has no 'output'"),
        ("zero_width", r"widths\[1\] must be a positive integer, got 0"),
        ("float_width", r"widths\[\d\] must be a positive integer, got \d\.\d"),
        ("width_over_r", "rank 8 exceeds the LoRA rank r=4"),
        ("unknown_dim", "must be one of 'lora_rank', 'width', got 'depth'"),
        ("unknown_module", "matches no module"),
        ("missing_model", "does not exist"),
        ("bad_batch", "not a multiple"),
    ],
)
def test_cli_bad_input_fails_early_with_one_line(case, match, sparse_model, data_file, tmp_path, capsys):
    data, cfg, model, extra = str(data_file), _cfg(), str(sparse_model), []
    if case == "empty_data":
        data = str(_write(tmp_path / "empty.json", ""))
    elif case == "no_output":
        data = str(_write(tmp_path / "no_out.json", [{"instruction": "a", "input": ""}]))
    elif case == "zero_width":
        cfg = _cfg({"groups": GROUPS, "widths": [8, 0]})
    elif case == "float_width":
        cfg = _cfg({"groups": GROUPS, "widths": [8, 4.5]})
    elif case == "width_over_r":
        cfg = _cfg(lora={"r": 4, "lora_alpha": 16})
    elif case == "unknown_dim":
        cfg = _cfg(dims=["lora_rank", "depth"])
    elif case == "unknown_module":
        cfg = _cfg({"groups": [["qkv_proj"]], "widths": WIDTHS})
    elif case == "missing_model":
        model = str(tmp_path / "no-model")
    elif case == "bad_batch":
        extra = ["--batch-size", "6", "--grad-accum", "4"]
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--model",
            model,
            "--config",
            str(_write(tmp_path / "cfg.json", cfg)),
            "--data",
            data,
            "--output",
            str(out),
            "--max-steps",
            "2",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    line = err.splitlines()[-1]  # above it at most progress bars
    assert line.startswith("shears-nncf train: error: ") and "Traceback" not in err
    assert re.search(match, line), err
    assert not out.exists()


def test_two_process_cpu_ddp_trains_one_adapter(sparse_model, data_file, tmp_path):
    """Two gloo ranks x micro-batch 2 train exactly what one process does with micro-batch 4."""
    cfg = _write(
        tmp_path / "cfg.json",
        {
            "bootstrapNAS": {
                "training": {
                    "lora": {"lora_alpha": 16, "lora_dropout": 0.0},
                    "elasticity": {"lora_rank": {"groups": GROUPS, "widths": WIDTHS}},
                }
            },
            "training": {
                "batch_size": 4,
                "grad_accum": 2,
                "save_steps": 3,
                "warmup_steps": 1,
                "logging_steps": 1,
                "val_set_size": 4,
                "cutoff_len": 128,
                "learning_rate": 1e-2,
            },
        },
    )
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "shears_nncf.cli",
        "-v",
        "train",
        "--model",
        str(sparse_model),
        "--config",
        str(cfg),
        "--data",
        str(data_file),
        "--output",
        str(out),
        "--max-steps",
        "3",
    ]
    # own session: on a timeout the launcher *and* its workers are killed, no orphan waits on a rendezvous
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"two-process training timed out:\n{stderr[-3000:]}")
    log = stdout + stderr
    assert proc.returncode == 0, log[-3000:]
    report = json.loads((out / "training_report.json").read_text())
    assert report["batch"]["world_size"] == 2 and report["global_step"] == 3
    assert report["batch"]["global_batch"] == 4  # the two ranks share the accumulation
    # every rank trained the same sub-adapter at every micro-batch
    drawn = re.findall(r"NLS rank (\d) step (\d+) micro-batch (\d+) pass 0: ([\d,]+)", log)
    by_rank = {r: {(s, m): c for rr, s, m, c in drawn if rr == r} for r in ("0", "1")}
    assert len(by_rank["0"]) == 3 and by_rank["0"] == by_rank["1"]
    # gradients were averaged over the ranks: the same adapter as one process with the whole batch per forward
    nls, training = _configs(data_file, grad_accum=1, max_steps=3, warmup_steps=1, seed=42)
    single = train(str(sparse_model), tmp_path / "single", nls, training)
    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    assert max(v.abs().max() for k, v in b.items() if "lora_B" in k) > 1e-3
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert [e["loss"] for e in report["loss_curve"]] == pytest.approx(
        [e["loss"] for e in single["loss_curve"]], rel=1e-5
    )
