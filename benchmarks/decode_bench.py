"""Decode speed of several IR variants, timed interleaved: IR folders, and the same IR in different precisions.

Each variant is ``LABEL=IR_DIR``, ``LABEL=IR_DIR@PRECISION`` (f32 | bf16 | default; after the ``@`` also compile
options, comma-separated: ``@f32,KV_CACHE_PRECISION=u8``), and with ``--runtime genai``
also ``LABEL=IR_DIR[@PRECISION]+ADAPTER`` (a run-time adapter: a name exported with the IR, a GenAI .safetensors
or a PEFT folder); ``IR_DIR`` may start with ``infer:``, ``genai:`` or ``genai-sdpa:`` to choose the runtime of
one variant, so that runtimes are timed interleaved too. ``--runtime infer`` (default) times the IR's own infer
request; ``genai`` times OpenVINO GenAI's LLMPipeline with its PerfMetrics (the kernels are then still read from an
infer-request compile). Every variant is compiled once with its IR's stored options
(``shears_nncf.runtime_options.ov_config``: the sparse rate and the stored precision, which ``@PRECISION``
overrides); then the variants take turns, one greedy generation each per round, the order reversed
every other round, so that machine noise falls on all of them alike. Prints the median time per output token (TPOT)
and to first token (TTFT), each against the first variant, and the kernels the FullyConnected layers ran::

    python benchmarks/decode_bench.py f32=run/openvino_ir@f32 bf16=run/openvino_ir@bf16 --threads 2
    python benchmarks/decode_bench.py unmerged=run/openvino_ir merged=run_sqft/openvino_ir --threads 2
    python benchmarks/decode_bench.py --runtime genai base=rt_ir in-ir=run/openvino_ir runtime=rt_ir+sub_adapter
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from shears_nncf.benchmarking import cpu_info, fc_kernels, greedy_generate
from shears_nncf.genai import load_pipeline
from shears_nncf.ir import IR_NAME
from shears_nncf.runtime_options import compiled_precision, ov_config


def _infer_step(request, prompt, n):
    """TTFT and mean TPOT (ms) of one greedy generation on the IR's infer request."""
    ttft, steps = greedy_generate(request, prompt, n)
    return ttft * 1e3, statistics.mean(steps) * 1e3


def _genai_step(pipe, prompt, n, adapter):
    """TTFT and TPOT (ms) of one greedy generation through GenAI, from its PerfMetrics."""
    g = pipe.generate_ids(prompt[0], n, adapter)
    return g.ttft_ms, g.tpot_ms


def interleaved(
    specs: list[str],
    threads: int | None = None,
    rounds: int = 15,
    prompt_len: int = 32,
    new_tokens: int = 32,
    runtime: str = "infer",
    attention_backend: str | None = None,
) -> dict[str, dict]:
    """Time every ``LABEL=...`` variant of ``specs`` interleaved; per label the median TPOT and TTFT (ms), the
    precision it ran in, its FullyConnected kernels (counted, and ``fc``: one row per node) and every round's
    figures."""
    import openvino as ov

    core = ov.Core()
    threads_prop = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    requests, fc, ran, prompt = {}, {}, {}, None
    for spec in specs:
        label, _, target = spec.partition("=")
        kind, backend = runtime, attention_backend
        for prefix in ("infer:", "genai:", "genai-sdpa:"):  # a per-variant runtime, to time runtimes interleaved
            if target.startswith(prefix):
                kind, target = prefix[:5], target[len(prefix) :]
                backend = "SDPA" if prefix == "genai-sdpa:" else backend
        target, _, adapter = target.partition("+")
        ir, _, after = target.partition("@")
        # after the @: a precision and/or compile options, comma-separated (f32,KV_CACHE_PRECISION=u8)
        items = [x for x in after.split(",") if x]
        options = dict(x.split("=", 1) for x in items if "=" in x)
        precision = next((x for x in items if "=" not in x), "")
        if adapter and kind != "genai":
            raise ValueError(f"{spec}: a run-time adapter needs --runtime genai")
        model = core.read_model(Path(ir) / IR_NAME)
        if prompt is None:
            vocab = model.output("logits").get_partial_shape()[-1].get_length()
            prompt = np.random.default_rng(0).integers(3, vocab, size=(1, prompt_len), dtype=np.int64)
        props = {"PERFORMANCE_HINT": "LATENCY", **ov_config(ir, precision or None), **threads_prop, **options}
        profiled = core.compile_model(model, "CPU", {**props, "PERF_COUNT": True})
        request = profiled.create_infer_request()
        greedy_generate(request, prompt, 2)
        fc[label] = fc_kernels(profiled, request, model)
        ran[label] = compiled_precision(profiled)
        del profiled, request
        if kind == "genai":
            extra = {**({"ATTENTION_BACKEND": backend} if backend else {}), **options}
            pipe = load_pipeline(ir, [adapter] if adapter else [], precision or None, threads, properties=extra)
            name = next(iter(pipe.adapters), None)
            requests[label] = lambda n, pipe=pipe, name=name: _genai_step(pipe, prompt, n, name)
        else:
            request = core.compile_model(model, "CPU", props).create_infer_request()
            requests[label] = lambda n, request=request: _infer_step(request, prompt, n)
        del model
        requests[label](4)  # warm-up
    times = {k: {"ttft": [], "tpot": []} for k in requests}
    for rnd in range(rounds):
        for label in list(requests) if rnd % 2 == 0 else list(requests)[::-1]:
            ttft, tpot = requests[label](new_tokens)
            times[label]["ttft"].append(ttft)
            times[label]["tpot"].append(tpot)
    return {
        label: {
            "ran": ran[label],
            "tpot_ms": statistics.median(t["tpot"]),
            "ttft_ms": statistics.median(t["ttft"]),
            "kernels": dict(Counter(k["exec_type"] for k in fc[label])),
            "fc": fc[label],
            "raw": t,
        }
        for label, t in times.items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="LABEL=IR_DIR or LABEL=IR_DIR@PRECISION")
    p.add_argument("--threads", type=int, default=None, help="INFERENCE_NUM_THREADS (default: OpenVINO's, all cores)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runtime", choices=("infer", "genai"), default="infer")
    p.add_argument(
        "--attention-backend",
        choices=("PA", "SDPA"),
        help="genai: GenAI's ATTENTION_BACKEND (its CPU default is "
        "PA, paged attention; SDPA is the stateful IR's own attention, as the infer runtime runs it)",
    )
    p.add_argument("--json", help="save the figures here")
    a = p.parse_args(argv)
    try:
        results = interleaved(
            a.variants, a.threads, a.rounds, a.prompt_len, a.new_tokens, a.runtime, a.attention_backend
        )
    except ValueError as e:
        p.error(str(e))
    cpu = cpu_info()
    print(
        f"{cpu['name']} (AMX: {', '.join(cpu['amx_flags']) or 'none'}), threads {a.threads or 'all'}, "
        f"{a.rounds} interleaved rounds of {a.prompt_len} + {a.new_tokens} tokens, runtime {a.runtime}"
    )
    first = next(iter(results))
    base_tpot = results[first]["tpot_ms"]
    print(f"{'variant':14s} {'ran':>5s} {'TPOT ms':>8s} {'vs ' + first:>10s} {'TTFT ms':>8s}  FullyConnected kernels")
    for label, r in results.items():
        print(
            f"{label:14s} {r['ran']:>5s} {r['tpot_ms']:8.2f} {r['tpot_ms'] / base_tpot:9.3f}x {r['ttft_ms']:8.2f}  "
            f"{r['kernels']}"
        )
    if a.json:
        out = {k: {key: v for key, v in r.items() if key != "fc"} for k, r in results.items()}
        Path(a.json).write_text(json.dumps({"cpu": cpu, "args": vars(a), "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
