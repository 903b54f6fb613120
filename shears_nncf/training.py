"""Stage 2: train an elastic-rank LoRA super-adapter on a (sparse) model with Neural Low-rank adapter Search.

Training is the stock Hugging Face :class:`~transformers.Trainer`, so ``accelerate launch`` / ``torchrun`` give
DDP, FSDP or DeepSpeed, checkpoints and ``--resume`` for free. :class:`NLSTrainer` only adds the NLS part: before
each micro-batch's forward pass it activates a sub-adapter drawn by :class:`NLSSampler`.

Three properties matter and are why the sampling looks the way it does:

* **Same draw everywhere.** A draw is a pure function of ``(seed, optimizer step, micro-batch)``, made with its
  own ``random.Random``; it never touches the process's global RNG. Every DDP rank therefore trains the same
  sub-adapter, and a resumed run draws what the uninterrupted run drew.
* **Fixed during backward.** The configuration is set in ``training_step`` before the forward pass and is not
  touched again until the next micro-batch, so a gradient-checkpointing recompute sees the ranks its forward saw.
* **Frozen base.** Only LoRA parameters are trainable; the base weights, and with them the zeros of stage 1,
  are bit-identical after training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from torch import nn
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .adapters import mark_masked, mask_lora
from .config import NLSConfig, TrainingConfig
from .datasets import VALIDATION_FILE, load_instruction_data, tokenize_records, write_records
from .elastic import (
    ELASTIC_CONFIG_NAME,
    ElasticityController,
    SearchSpace,
    SubnetConfig,
    add_elastic_lora,
    build_search_space,
)
from .errors import ShearsError
from .io import read_json, write_json
from .models import load_model, load_tokenizer, model_skeleton, resolve_model_path
from .reports import REPORT_FILES, TrainingReport

logger = logging.getLogger(__name__)

REPORT_NAME = REPORT_FILES["train"]
SAMPLING_STATE_NAME = "nls_sampling.json"  # in every checkpoint-N folder: the histogram so far
_ADAPTER_FILES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, "README.md")


# ------------------------------------------------------------------------------------------- sampling


class NLSSampler:
    """The sub-adapter(s) to train on a micro-batch: a pure function of ``(seed, step, micro-batch)``.

    ``uniform`` draws one rank per group uniformly; ``sandwich`` trains the maximal, the minimal and a
    uniform draw on the same micro-batch. With ``sample_every="step"`` all micro-batches of one optimizer
    step share the draw.
    """

    def __init__(self, space: SearchSpace, sampling: str = "uniform", sample_every: str = "micro_batch", seed: int = 0):
        self.space = space
        self.sampling = sampling
        self.sample_every = sample_every
        self.seed = seed

    def configs(self, step: int, micro: int = 0) -> list[SubnetConfig]:
        key = f"nls:{self.seed}:{step}" if self.sample_every == "step" else f"nls:{self.seed}:{step}:{micro}"
        drawn = self.space.random(random.Random(key))  # str seeds hash identically in every process
        if self.sampling == "sandwich":
            return [self.space.maximal(), self.space.minimal(), drawn]
        return [drawn]


@dataclasses.dataclass
class SamplingHistogram:
    """How often each group trained at each rank (one count per forward/backward pass)."""

    counts: dict[str, Counter] = dataclasses.field(default_factory=dict)

    def add(self, config: SubnetConfig) -> None:
        for group, width in config.items():
            self.counts.setdefault(group, Counter())[int(width)] += 1

    def summary(self) -> dict:
        overall: Counter = Counter()
        for c in self.counts.values():
            overall.update(c)
        as_json = lambda c: {str(w): n for w, n in sorted(c.items(), reverse=True)}  # noqa: E731
        return {
            "passes": max((sum(c.values()) for c in self.counts.values()), default=0),
            "all_groups": as_json(overall),
            "per_group": {g: as_json(c) for g, c in self.counts.items()},
        }

    def save(self, folder: str | Path) -> None:
        write_json(
            Path(folder) / SAMPLING_STATE_NAME, {g: {str(w): n for w, n in c.items()} for g, c in self.counts.items()}
        )

    @classmethod
    def load(cls, folder: str | Path) -> "SamplingHistogram":
        path = Path(folder) / SAMPLING_STATE_NAME
        if not path.is_file():
            logger.warning("%s has no %s; the sampling histogram restarts at zero", folder, SAMPLING_STATE_NAME)
            return cls()
        raw = read_json(path, "sampling state")
        return cls({g: Counter({int(w): n for w, n in c.items()}) for g, c in raw.items()})


#: optimizer steps per length-sorted mega-batch (HF's default is 50)
GROUP_STEPS = 4


class StepGroupedSampler(LengthGroupedSampler):
    """HF's length grouping, sorted within mega-batches of :data:`GROUP_STEPS` optimizer steps.

    HF sorts 50 steps' records longest first, so a run stopped by ``max_steps`` inside the first mega-batch trains
    on its longest records only (40 of 50 steps: the longest 80%). Four-step mega-batches keep every prefix of the
    run a uniform sample of the data and still cut most of the padding (benchmarks/train_step_cost.py).
    """

    def __iter__(self):
        return iter(
            get_length_grouped_indices(
                self.lengths, self.batch_size, mega_batch_mult=GROUP_STEPS, generator=self.generator
            )
        )


class NLSTrainer(Trainer):
    """``Trainer`` that trains the sub-adapter(s) :class:`NLSSampler` draws for each micro-batch."""

    def __init__(
        self,
        *args,
        controller: ElasticityController,
        sampler: NLSSampler,
        histogram: Optional[SamplingHistogram] = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.controller = controller
        self.sampler = sampler
        self.histogram = histogram if histogram is not None else SamplingHistogram()
        self._micro = (-1, -1)  # (optimizer step, micro-batch index within it)
        self._loss_scale = 1.0

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        return StepGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=[len(ids) for ids in dataset["input_ids"]],
        )

    def _next_micro_batch(self) -> int:
        step, micro = self._micro
        self._micro = (self.state.global_step, micro + 1 if step == self.state.global_step else 0)
        return self._micro[1]

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        step, micro = self.state.global_step, self._next_micro_batch()
        configs = self.sampler.configs(step, micro)
        total = None
        for i, config in enumerate(configs):
            self.controller.activate(config)  # before the forward: a checkpoint recompute sees the same ranks
            self.histogram.add(config)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "NLS rank %d step %d micro-batch %d pass %d: %s",
                    self.args.process_index,
                    step,
                    micro,
                    i,
                    ",".join(str(w) for w in config.values()),
                )
            last = i == len(configs) - 1
            # Sandwich passes accumulate gradients locally; DDP reduces once, after the last one.
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            self._loss_scale = 1.0 / len(configs)
            try:
                with sync:
                    loss = super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._loss_scale = 1.0
            total = loss if total is None else total + loss
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if self._loss_scale == 1.0:
            return out
        return (out[0] * self._loss_scale, out[1]) if return_outputs else out * self._loss_scale


class NLSCallback(TrainerCallback):
    """NLS inside any Hugging Face ``Trainer``: a sub-adapter drawn by :class:`NLSSampler` before each micro-batch.

    ``trainer = Trainer(model=peft_model, ..., callbacks=[NLSCallback(controller, NLSSampler(controller.space))])``,
    with ``peft_model, controller = add_elastic_lora(model, nls)``. It trains one draw per micro-batch (``uniform``
    sampling); ``sandwich`` trains several sub-adapters on one micro-batch, which needs :class:`NLSTrainer`. In a loop
    of your own the same is ``controller.activate(sampler.configs(step, micro)[0])`` before each forward pass.
    """

    def __init__(
        self, controller: ElasticityController, sampler: NLSSampler, histogram: Optional[SamplingHistogram] = None
    ):
        if sampler.sampling != "uniform":
            raise ShearsError(
                f"NLSCallback trains one sub-adapter per micro-batch; {sampler.sampling!r} sampling needs NLSTrainer"
            )
        self.controller, self.sampler = controller, sampler
        self.histogram = histogram if histogram is not None else SamplingHistogram()
        self._micro = 0

    def _activate(self, step: int) -> None:
        (config,) = self.sampler.configs(step, self._micro)
        self.controller.activate(config)  # before the forward: a checkpoint recompute sees the same ranks
        self.histogram.add(config)

    def on_step_begin(self, args, state, control, **kwargs):
        self._micro = 0
        self._activate(state.global_step)

    def on_substep_end(self, args, state, control, **kwargs):
        self._micro += 1
        self._activate(state.global_step)


class SamplingStateCallback(TrainerCallback):
    """Writes the sampling histogram into every checkpoint so that ``--resume`` continues the count."""

    def __init__(self, histogram: SamplingHistogram):
        self.histogram = histogram

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.histogram.save(folder)


# ------------------------------------------------------------------------------------- output folder


def _last_checkpoint(output: Path) -> Optional[str]:
    return get_last_checkpoint(str(output)) if output.is_dir() else None


def _check_output(output: Path, resume: bool) -> Optional[str]:
    """The checkpoint to resume from (or None); refuse to mix a fresh run into a used folder."""
    if output.exists() and not output.is_dir():
        raise ShearsError(f"--output {output} is a file; pass a folder")
    if resume:
        ckpt = _last_checkpoint(output)
        if ckpt is None:
            raise ShearsError(f"--resume: {output} has no checkpoint-N folder to continue from; run without --resume")
        return ckpt
    if output.is_dir() and any(output.iterdir()):
        raise ShearsError(
            f"output folder {output} exists and is not empty; pass --resume to continue it or choose another --output"
        )
    return None


def _check_same_space(output: Path, space: SearchSpace) -> None:
    path = output / ELASTIC_CONFIG_NAME
    if path.is_file() and SearchSpace.load(output).to_dict() != space.to_dict():
        raise ShearsError(
            f"the config's search space differs from the one of the run in {output}; resume with the same config"
        )


def _discard_failed_run(output: Path, existed: bool) -> None:
    """Remove what a run that failed before its first checkpoint wrote; keep checkpoints for --resume."""
    if _last_checkpoint(output) is not None:
        logger.warning("Training stopped; %s keeps its checkpoints, continue with --resume", output)
        return
    if existed:
        for p in output.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        shutil.rmtree(output, ignore_errors=True)


# ---------------------------------------------------------------------------------------- arguments


def _training_arguments(output: Path, training: TrainingConfig, world_size: int):
    accum = training.accumulation_steps
    if world_size > 1:
        # As LLM-Adapters: batch_size stays the global batch, the ranks share the accumulation.
        if accum % world_size:
            logger.warning(
                "grad_accum %d is not a multiple of %d processes; the global batch becomes %d",
                accum,
                world_size,
                training.micro_batch * max(1, accum // world_size) * world_size,
            )
        accum = max(1, accum // world_size)
    warmup: float = training.warmup_steps
    if training.warmup_ratio > 0:
        warmup = training.warmup_ratio  # transformers 5 takes a fraction (< 1) in warmup_steps
    return TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=training.micro_batch,
        gradient_accumulation_steps=accum,
        learning_rate=training.learning_rate,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps,
        warmup_steps=warmup,
        lr_scheduler_type=training.lr_scheduler_type,
        weight_decay=training.weight_decay,
        logging_steps=training.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        eval_strategy="no",
        seed=training.seed,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        bf16=training.bf16,
        gradient_checkpointing=training.gradient_checkpointing,
        gradient_checkpointing_kwargs={
            "use_reentrant": False
        },  # reentrant checkpointing drops LoRA grads on a frozen base
        ddp_find_unused_parameters=False,  # every LoRA parameter takes part (inactive slices get zero gradient)
        remove_unused_columns=False,
        report_to="none",
        # accelerate treats a multi-process run as CPU DDP (gloo), and bf16 as CPU autocast, only when asked to use
        # the CPU
        use_cpu=(world_size > 1 or training.bf16) and not torch.cuda.is_available(),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _wait_for_everyone() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _loss_points(log_history: list[dict]) -> list[dict]:
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm")
    return [{k: e[k] for k in keys if k in e} for e in log_history if "loss" in e]


# --------------------------------------------------------------------------------------------- train


def train(
    model: str,
    output: str | os.PathLike,
    nls: NLSConfig,
    training: TrainingConfig,
    resume: bool = False,
    trust_remote_code: bool = False,
    callbacks: Sequence[Any] = (),
) -> TrainingReport:
    """Train an NLS super-adapter on ``model`` and write it to ``output``; returns the training report.

    ``output`` receives a standard PEFT adapter (rank = the largest width), ``elastic_config.json`` (the search
    space), ``validation.jsonl`` (the held-out records), ``training_report.json`` and the trainer's
    ``checkpoint-N`` folders. Every input is checked before ``output`` is created; a run that fails before its
    first checkpoint leaves nothing behind, a later failure leaves checkpoints that ``resume=True`` continues.
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects.
    """
    output = Path(output)
    model_path = resolve_model_path(model)
    checkpoint = _check_output(output, resume)
    existed = output.is_dir()
    train_records, val_records = load_instruction_data(
        training.data, training.val_set_size, training.seed, training.max_train_samples, training.response_format
    )
    # the search space (group and target patterns) is checked on the weightless module tree before any loading
    build_search_space(model_skeleton(model_path, trust_remote_code), nls)
    set_seed(training.seed)  # the LoRA initialisation
    # bf16: the frozen base is stored in bf16 (autocast would cast every weight again in every pass,
    # benchmarks/train_step_cost.py); PEFT keeps the adapter's own weights in f32
    base = load_model(
        model_path, dtype=torch.bfloat16 if training.bf16 else torch.float32, trust_remote_code=trust_remote_code
    )
    base.config.use_cache = False
    peft_model, controller = add_elastic_lora(base, nls)
    if nls.sparse_adapter:  # SQFT: every sub-adapter's update keeps the zeros, so it merges into the sparse model
        logger.info("sparsity-masked adapter update on %d layers", mask_lora(peft_model))
    space = controller.space
    if checkpoint:
        _check_same_space(output, space)
    tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
    dataset = tokenize_records(train_records, tokenizer, training.cutoff_len, training.train_on_inputs)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "Search space: %d groups, ranks %s, %.3g sub-adapters; %s trainable of %s parameters",
        len(space.groups),
        sorted({w for g in space.groups for w in g.ranks}, reverse=True),
        space.size(),
        f"{trainable:,}",
        f"{total:,}",
    )

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = _training_arguments(output, training, world_size)
    _ = args.device  # sets up the devices; under torchrun this joins the process group
    is_main = args.process_index == 0
    _wait_for_everyone()  # every rank has checked --output before rank 0 writes to it
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
        space.save(output)
        write_records(output / VALIDATION_FILE, val_records)
        if nls.sparse_adapter:
            mark_masked(output)

    histogram = SamplingHistogram.load(checkpoint) if checkpoint else SamplingHistogram()
    trainer = NLSTrainer(
        model=peft_model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, padding=True, return_tensors="pt"),
        callbacks=[SamplingStateCallback(histogram), *callbacks],
        controller=controller,
        sampler=NLSSampler(space, nls.sampling, nls.sample_every, training.seed),
        histogram=histogram,
    )
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        _save_final(trainer, space, output, is_main)
        if is_main and nls.sparse_adapter:
            mark_masked(output)  # again, now bound to the final weights
    except BaseException:
        if is_main:
            _discard_failed_run(output, existed)
        raise
    report = _report(
        trainer,
        result,
        space,
        nls,
        training,
        model,
        checkpoint,
        time.perf_counter() - start,
        len(train_records),
        len(val_records),
        len(dataset),
        trainable,
        total,
        world_size,
    )
    if is_main:
        write_json(output / REPORT_NAME, report)
        logger.info(
            "Super-adapter written to %s (%d steps, final loss %s)",
            output,
            report["global_step"],
            report["loss_curve"][-1]["loss"] if report["loss_curve"] else "n/a",
        )
    _wait_for_everyone()
    return report


def format_report(report: TrainingReport) -> str:
    """One line for the command line: steps, time, final loss, sizes."""
    curve = report["loss_curve"]
    loss = f"final loss {curve[-1]['loss']:.4g}" if curve else "no loss logged"
    return (
        f"{report['global_step']} steps in {report['train_seconds']:.0f} s ({report['seconds_per_step']:.2f} s/step), "
        f"{loss}, {report['trainable_params']:,} trainable parameters, "
        f"{report['nls']['search_space_size']:.3g} sub-adapters"
    )


def _save_final(trainer, space: SearchSpace, output: Path, is_main: bool) -> None:
    """PEFT's adapter files (gathered by the Trainer under FSDP / DeepSpeed) plus the search space, in place at once."""
    tmp = output / ".final.tmp"
    trainer.save_model(str(tmp))  # collective: every rank takes part, the main process writes
    if is_main:
        for name in _ADAPTER_FILES:
            if (tmp / name).is_file():
                os.replace(tmp / name, output / name)
        shutil.rmtree(tmp, ignore_errors=True)
        space.save(output)
    trainer.accelerator.wait_for_everyone()


def _report(
    trainer,
    result,
    space: SearchSpace,
    nls: NLSConfig,
    training: TrainingConfig,
    model: str,
    checkpoint: Optional[str],
    seconds: float,
    n_train: int,
    n_val: int,
    n_seq: int,
    trainable: int,
    total: int,
    world_size: int,
) -> TrainingReport:
    state, args = trainer.state, trainer.args
    return {
        "model": model,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / max(1, state.global_step - _step_of(checkpoint)), 4),
        "resumed_from": checkpoint,
        "data": {
            "sources": list(training.data),
            "train_records": n_train,
            "train_sequences": n_seq,
            "validation_records": n_val,
            "cutoff_len": training.cutoff_len,
            "train_on_inputs": training.train_on_inputs,
            "response_format": training.response_format,
        },
        "batch": {
            "batch_size": training.batch_size,
            "micro_batch": args.per_device_train_batch_size,
            "grad_accum": args.gradient_accumulation_steps,
            "world_size": world_size,
            "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        },
        "optimizer": {
            "learning_rate": training.learning_rate,
            "warmup_steps": args.warmup_steps,
            "lr_scheduler_type": str(args.lr_scheduler_type),
            "weight_decay": training.weight_decay,
        },
        "nls": {
            "sampling": nls.sampling,
            "sample_every": nls.sample_every,
            "seed": training.seed,
            "max_rank": space.max_rank,
            "lora_alpha": space.lora_alpha,
            "groups": len(space.groups),
            "search_space_size": space.size(),
            "adapter_params": {
                "maximal": space.adapter_params(space.maximal()),
                "heuristic": space.adapter_params(space.heuristic()),
                "minimal": space.adapter_params(space.minimal()),
            },
        },
        "trainable_params": trainable,
        "total_params": total,
        "sampled_configs": trainer.histogram.summary(),
        "loss_curve": _loss_points(state.log_history),
        "log_history": state.log_history,
    }


def _step_of(checkpoint: Optional[str]) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0
