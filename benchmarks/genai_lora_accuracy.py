"""How close to torch + PEFT is a sub-adapter applied at run time by OpenVINO GenAI on a W8A8 base IR?

GenAI's LLMPipeline gives no logits, so its dynamic-LoRA graph is rebuilt in plain OpenVINO
(``shears_nncf.genai.emulate_runtime_lora``; ``tests/test_genai.py`` checks it decodes as GenAI does) and the
next-token distribution at every position of N task prompts with their answers is compared with torch + PEFT's:
mean KL(torch || IR) per token and top-1 agreement, as ``w8a8_accuracy.py`` does for the export schemes. Variants:

* ``in-ir``: the adapter exported inside the IR (``RUN/openvino_ir``, the default export);
* ``runtime``: the base IR + the adapter file written for it (``lora_B`` scaled, ``lora_A`` / SmoothQuant factor);
* ``runtime-uncompensated``: the same file without the SmoothQuant compensation (what a plain PEFT -> GenAI
  conversion gives);
* ``base-only``: the base IR with no adapter, against torch *with* the adapter (what the adapter is worth here).

    python benchmarks/genai_lora_accuracy.py --run /tmp/demo_run --base-ir /tmp/base_ir --limit 30
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from w8a8_accuracy import compare, torch_reference  # noqa: E402

from shears_nncf.datasets import format_prompt  # noqa: E402
from shears_nncf.genai import emulate_runtime_lora, write_genai_adapter  # noqa: E402
from shears_nncf.ir import IR_NAME, ov_config  # noqa: E402
from shears_nncf.models import load_tokenizer  # noqa: E402
from shears_nncf.tasks import load_test_records, parse_task_specs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a `shears-nncf run` folder (sparse_model/, sub_adapter/, openvino_ir/)")
    p.add_argument("--base-ir", required=True, help="the W8A8 base IR (export --adapter-mode runtime, or without --adapter)")
    p.add_argument("--task", default="ARC-Easy")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--precision", default="f32", help="f32 | bf16 | default")
    p.add_argument("--json")
    args = p.parse_args(argv)
    import openvino as ov
    from safetensors.numpy import load_file

    run = Path(args.run)
    model_dir, adapter = str(run / "sparse_model"), str(run / "sub_adapter")
    tokenizer = load_tokenizer(model_dir)
    records = load_test_records(parse_task_specs([args.task])[0].path, args.limit)
    inputs = [tokenizer(format_prompt(r), return_tensors="np")["input_ids"] for r in records]
    ref = torch_reference(model_dir, adapter, inputs)
    props = {**ov_config(args.base_ir, args.precision)}
    scratch = Path(tempfile.mkdtemp(prefix="genai-acc-"))
    compensated = write_genai_adapter(adapter, args.base_ir, scratch / "compensated.safetensors")
    write_genai_adapter(adapter, model_dir, scratch / "plain.safetensors")  # no IR there: no compensation
    core = ov.Core()
    results = {"in-ir": compare(core.read_model(run / "openvino_ir" / IR_NAME), inputs, ref,
                                props=ov_config(run / "openvino_ir", args.precision))}
    for name, file in (("runtime", "compensated"), ("runtime-uncompensated", "plain")):
        model = core.read_model(Path(args.base_ir) / IR_NAME)
        feeds = emulate_runtime_lora(model, load_file(scratch / f"{file}.safetensors"))
        results[name] = compare(model, inputs, ref, props=props, feeds=feeds)
    results["base-only"] = compare(core.read_model(Path(args.base_ir) / IR_NAME), inputs, ref, props=props)
    print(f"{args.task}, first {args.limit} test prompts with their answers, {results['in-ir']['tokens']} tokens, "
          f"precision {args.precision}; {len(compensated['smoothquant_compensated_layers'])} of {compensated['layers']} "
          "adapted layers behind SmoothQuant")
    print(f"{'variant':24s} {'KL/token':>9s} {'top-1 agree':>12s}")
    for name, r in results.items():
        print(f"{name:24s} {r['kl_per_token']:9.4f} {r['top1_agreement']:12.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
