"""How far does each IR quantization scheme move the model's predictions from the float torch model?

Exports the fp32 IR of a sparse model + sub-adapter once (``shears_nncf.exporting``), quantizes it with each scheme
through the export's own ``shears_nncf.quantization.quantize``, and compares the next-token distribution of every
position of N task prompts (with their gold answers) against the torch model: mean KL(torch || IR) per token and
top-1 agreement. Token-level figures separate the schemes with far fewer samples than task accuracy can.

    python benchmarks/w8a8_accuracy.py --run shears_run --out w8a8_acc   # a `shears-nncf run` folder

Schemes: ``int8-weights`` (weight-only, float activations: the floor), ``int4-weights`` (OpenVINO's int4 LLM
format, what users deploy instead), ``w8a8-all`` (every Linear W8A8), ``w8a8-mlp-out`` (only down_proj keeps float
inputs), ``w8a8-head-float`` (only lm_head does: every pruned layer on the sparse kernel), ``w8a8-float-mlp-out``
(down_proj and lm_head keep float inputs: the export default), ``w8a8-float-mlp-out-int4`` (the default with its
float-input layers' weights int4: ``advanced.float_input_weights``), ``w8a8-nosq`` / ``w8a8-sq0.5`` (the default
with SmoothQuant off / at alpha 0.5 instead of NNCF's 0.95: ``advanced.smooth_quant_alpha``). ``--irs
LABEL=IR_DIR`` scores IRs exported with other options as they are (``--schemes ''`` for those alone); ``--decode``
scores them one token per step. ``--calibration`` is the schemes' calibration source (default the built-in C4
sample; the run's training file calibrates on the task).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from shears_nncf.calibration import as_nncf_dataset, default_calibration_source
from shears_nncf.config import AdvancedExportConfig, ExportConfig
from shears_nncf.datasets import format_prompt
from shears_nncf.exporting import export
from shears_nncf.ir import IR_NAME, ir_inputs
from shears_nncf.models import load_model, load_tokenizer
from shears_nncf.quantization import float_input_modules, quantize
from shears_nncf.tasks import load_test_records, parse_task_specs

logger = logging.getLogger("w8a8_accuracy")

SCHEMES = {  # name: (quantize mode, ignored_scopes[, AdvancedExportConfig fields])
    "int8-weights": ("int8-weights", None),
    "int4-weights": ("int4-weights", None),
    "w8a8-all": ("w8a8", []),
    "w8a8-mlp-out": ("w8a8", ["down_proj"]),
    "w8a8-head-float": ("w8a8", ["lm_head"]),
    "w8a8-float-mlp-out": ("w8a8", None),
    "w8a8-float-mlp-out-int4": ("w8a8", None, {"float_input_weights": "int4"}),
    "w8a8-nosq": ("w8a8", None, {"smooth_quant_alpha": -1}),
    "w8a8-sq0.5": ("w8a8", None, {"smooth_quant_alpha": 0.5}),
}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def torch_reference(model_dir: str, adapter: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_model(model_dir), adapter).eval()
    with torch.no_grad():
        return [
            log_softmax(model(input_ids=torch.from_numpy(ids)).logits[0].float().numpy()).astype(np.float16)
            for ids in tqdm(inputs, desc="torch", leave=False)
        ]


def compare(
    ir_model,
    inputs: list[np.ndarray],
    ref: list[np.ndarray],
    precision: str = "f32",
    props: Optional[dict] = None,
    feeds: Optional[dict] = None,
    decode: bool = False,
) -> dict:
    """KL(torch || IR) per token and top-1 agreement; ``props`` replace the precision-only compile options and
    ``feeds`` are extra model inputs (e.g. run-time LoRA tensors). ``decode`` feeds
    one token per inference after the first, as generation does, so every later position reads the KV cache
    (whose precision a one-pass prefill never exercises)."""
    import openvino as ov

    if props is None:
        props = {} if precision == "default" else {"INFERENCE_PRECISION_HINT": precision}
    compiled = ov.Core().compile_model(ir_model, "CPU", props)
    request = compiled.create_infer_request()
    kl = agree = tokens = 0.0
    for ids, r in zip(tqdm(inputs, desc="IR", leave=False), ref):
        request.reset_state()
        if decode:
            steps = [
                request.infer({**ir_inputs(ids[:, i : i + 1], past=i), **(feeds or {})})[compiled.output("logits")][
                    0, -1
                ]
                for i in range(ids.shape[1])
            ]
            got = log_softmax(np.stack(steps))
        else:
            got = log_softmax(
                np.asarray(request.infer({**ir_inputs(ids), **(feeds or {})})[compiled.output("logits")])[0]
            )
        r = r.astype(np.float32)
        kl += float(np.sum(np.exp(r) * (r - got)))
        agree += int((got.argmax(-1) == r.argmax(-1)).sum())
        tokens += len(r)
    return {"kl_per_token": kl / tokens, "top1_agreement": agree / tokens, "tokens": int(tokens)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a `shears-nncf run` folder (sparse_model/ and sub_adapter/ are used)")
    p.add_argument("--out", required=True, help="work folder for the fp32 IR and the results")
    p.add_argument("--task", default="ARC-Easy")
    p.add_argument("--limit", type=int, default=30, help="test prompts compared (all their tokens count)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated; '' = none (only --irs)")
    p.add_argument(
        "--irs",
        default="",
        help="comma-separated LABEL=IR_DIR[@KEY=VALUE;...]: IRs already exported from the "
        "run's model and sub-adapter (e.g. with other export options), scored as they are, with extra "
        "compile options after the @ (KV_CACHE_PRECISION=u8)",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="score every position after the first through one-token "
        "decode steps (the KV cache is read), not one prefill",
    )
    p.add_argument("--calibration", help="calibration source of the schemes (default: the built-in C4 sample)")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument(
        "--precisions",
        default="f32",
        help="OpenVINO inference precisions to compare each scheme in: "
        "f32,bf16,default (bf16 is the AMX default for f32 IRs)",
    )
    args = p.parse_args(argv)
    precisions = args.precisions.split(",")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    import openvino as ov

    run, out = Path(args.run), Path(args.out)
    model_dir, adapter = str(run / "sparse_model"), str(run / "sub_adapter")
    tokenizer = load_tokenizer(model_dir)
    spec = parse_task_specs([args.task])[0]
    records = load_test_records(spec.path, args.limit)
    # the prompt followed by the test set's reference response
    inputs = [tokenizer(format_prompt(r), return_tensors="np")["input_ids"] for r in records]
    ref = torch_reference(model_dir, adapter, inputs)
    fp32 = out / "fp32_ir"
    if not (fp32 / IR_NAME).is_file():
        export(model_dir, fp32, adapter=adapter, config=ExportConfig(quantize="none"))
    core = ov.Core()

    def label(name, prec):
        return name if precisions == ["f32"] else f"{name} @ {prec}"

    results = {
        label("fp32", prec): compare(core.read_model(fp32 / IR_NAME), inputs, ref, prec, decode=args.decode)
        for prec in precisions
    }
    skeleton = load_model(model_dir)
    # one calibration set for every W8A8 scheme, so that they differ only in what the scheme says
    source = args.calibration or default_calibration_source()
    calibration = as_nncf_dataset(
        tokenizer, source, args.nsamples, args.seqlen, 0, transform_fn=lambda ids: ir_inputs(ids.numpy())
    )
    for spec in filter(None, args.irs.split(",")):
        name, _, target = spec.partition("=")
        ir_dir, _, extra = target.partition("@")
        options = dict(x.split("=", 1) for x in extra.split(";") if x)
        for prec in precisions:
            props = {**({} if prec == "default" else {"INFERENCE_PRECISION_HINT": prec}), **options}
            results[label(name, prec)] = compare(
                core.read_model(Path(ir_dir) / IR_NAME), inputs, ref, prec, props, decode=args.decode
            )
            logger.info("%s: %s", label(name, prec), results[label(name, prec)])
    for name in filter(None, args.schemes.split(",")):
        mode, scopes, *rest = SCHEMES[name]
        # anything unset keeps the export's own default; the float-input layers are named here, so no scopes go in
        config = ExportConfig(
            quantize=mode,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            advanced=AdvancedExportConfig(**(rest[0] if rest else {})),
        )
        t0 = time.perf_counter()
        floats = float_input_modules(skeleton, scopes) if mode == "w8a8" else []
        ir = quantize(core.read_model(fp32 / IR_NAME), calibration if mode == "w8a8" else None, config, floats)
        quantize_s = round(time.perf_counter() - t0, 1)
        for prec in precisions:
            results[label(name, prec)] = {
                **compare(ir, inputs, ref, prec, decode=args.decode),
                "quantize_s": quantize_s,
                "float_input_layers": len(floats),
            }
            logger.info("%s: %s", label(name, prec), results[label(name, prec)])
    tokens = next(iter(results.values()))["tokens"]
    print(
        f"{args.task}, first {args.limit} test prompts with their answers, {tokens} tokens"
        + (f"; schemes calibrated on {args.nsamples} x {args.seqlen} tokens of {source}" if args.schemes else "")
    )
    print(f"{'scheme':30s} {'KL/token':>9s} {'top-1 agree':>12s}")
    for name, r in results.items():
        print(f"{name:30s} {r['kl_per_token']:9.4f} {r['top1_agreement']:12.3f}")
    (out / "w8a8_accuracy.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
