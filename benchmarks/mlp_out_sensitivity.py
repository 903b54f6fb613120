"""Which MLP output projections can go W8A8 (onto the sparse kernel) at the least cost in accuracy?

The export keeps every ``down_proj`` on float inputs because W8A8 there moves the model far (benchmarks/RESULTS.md),
but the cost is not spread evenly over the blocks. This ranks them in torch, one layer at a time, by simulating
what ``nncf.quantize`` does to that layer alone (SmoothQuant's per-channel scales as NNCF computes them: alpha,
clipped to [10th percentile, 100]; per-tensor asymmetric int8 activations over the mean of each window's min and
max; per-row symmetric int8 weights), and scoring KL(float || simulated) per token on held-out windows. Then it
simulates all of them W8A8 but the K most sensitive, and prints the ``--ignored-scopes`` that keeps those K float::

    python benchmarks/mlp_out_sensitivity.py --run shears_run --calibration ../shared/data/llm_adapters/ARC-Easy/train.json

A simulation ranks; the figure that counts is the exported IR's (``benchmarks/w8a8_accuracy.py --irs``).
"""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shears_nncf.calibration import calibration_windows, default_calibration_source
from shears_nncf.export import MLP_OUT_PROJECTIONS
from shears_nncf.models import load_model, load_tokenizer
from shears_nncf.outliers import input_absmax

LEVELS = 255  # asymmetric int8 activations


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel scale, clipped as NNCF 3.4 clips it."""
    s = x_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=float(torch.quantile(s, 0.1)), max=1e2)


def fake_quant(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    scale = (hi - lo) / LEVELS
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, LEVELS).sub(zero) * scale


def window_ranges(model, modules: dict, scales: dict, windows: torch.Tensor, batch_size: int = 8) -> dict:
    """NNCF's MEAN_MINMAX range of each layer's smoothed input: the mean over the windows of each one's min and max."""
    lows, highs = {n: [] for n in modules}, {n: [] for n in modules}

    def hook(name):
        def record(_module, args):
            x = args[0].detach() / scales[name]
            lows[name].append(x.amin((1, 2)))
            highs[name].append(x.amax((1, 2)))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        with torch.inference_mode():
            for batch in tqdm(windows.split(batch_size), desc="activation ranges", leave=False):
                model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: (min(float(torch.cat(lows[n]).mean()), 0.0), max(float(torch.cat(highs[n]).mean()), 0.0)) for n in modules}


class SimulatedW8A8:
    """One layer's simulated W8A8 (scales, activation range, int8 weights), switched on and off in place.

    Left out: NNCF smooths a layer and the unmerged LoRA A that shares its input with one scale (the pair's best
    min/max ratio; here the base weight's) and quantizes that A's weights too (here they stay float; its input is
    quantized, as in the IR). The A is rank r against the layer's thousands of rows.
    """

    def __init__(self, module: torch.nn.Module, scales: torch.Tensor, lo: float, hi: float):
        linear = getattr(module, "base_layer", module)  # a PEFT LoRA layer's own Linear
        self.module, self.linear, self.s = module, linear, scales
        self.lo, self.hi = lo, max(hi, lo + 1e-12)  # an input that is always zero gets a range all the same
        ws = linear.weight.detach() * scales
        step = ws.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
        self.w_q = ((ws / step).round().clamp(-127, 127) * step) / scales
        self._saved, self._hook = None, None

    def __enter__(self):
        self._saved = self.linear.weight.data
        self.linear.weight.data = self.w_q
        self._hook = self.module.register_forward_pre_hook(
            lambda _m, args: (fake_quant(args[0] / self.s, self.lo, self.hi) * self.s, *args[1:]))
        return self

    def __exit__(self, *exc):
        self._hook.remove()
        self.linear.weight.data = self._saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a `shears-nncf run` folder (sparse_model/ and sub_adapter/)")
    p.add_argument("--calibration", help="calibration source (default: the built-in C4 sample)")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--score-windows", type=int, default=8, help="held-out windows of the same source to score on")
    p.add_argument("--alpha", type=float, default=0.95, help="SmoothQuant alpha (NNCF's default for MatMuls)")
    p.add_argument("--keep", default="2,4,8", help="numbers of most sensitive layers kept float to simulate")
    args = p.parse_args(argv)

    from peft import PeftModel

    run = Path(args.run)
    tok = load_tokenizer(str(run / "sparse_model"))
    model = load_model(str(run / "sparse_model"))
    if (run / "sub_adapter").is_dir():  # injected in place: the model's own module names are the export's
        model = PeftModel.from_pretrained(model, str(run / "sub_adapter")).get_base_model()
    model.eval()
    source = args.calibration or default_calibration_source()
    windows = calibration_windows(tok, source, args.nsamples + args.score_windows, args.seqlen, seed=0)
    calib, held_out = windows[:args.nsamples], windows[args.nsamples:]
    layers = {n: m for n, m in model.named_modules()
              if n.rsplit(".", 1)[-1] in MLP_OUT_PROJECTIONS and isinstance(getattr(m, "base_layer", m), torch.nn.Linear)}
    # two passes over the calibration windows, as NNCF's statistics: per-channel |x| max, then the smoothed ranges
    absmax = input_absmax(model, list(layers), calib)
    scales = {n: smooth_scales(absmax[n], getattr(m, "base_layer", m).weight.detach().abs().amax(0), args.alpha)
              for n, m in layers.items()}
    ranges = window_ranges(model, layers, scales, calib)
    sims = {n: SimulatedW8A8(m, scales[n], *ranges[n]) for n, m in layers.items()}

    with torch.inference_mode():
        reference = [torch.log_softmax(model(input_ids=b, use_cache=False).logits.float(), -1) for b in held_out.split(4)]

    def kl(active) -> float:
        with ExitStack() as stack, torch.inference_mode():
            for n in active:
                stack.enter_context(sims[n])
            total = tokens = 0.0
            for batch, ref in zip(held_out.split(4), reference):
                got = torch.log_softmax(model(input_ids=batch, use_cache=False).logits.float(), -1)
                total += float((ref.exp() * (ref - got)).sum())
                tokens += ref.shape[0] * ref.shape[1]
        return total / tokens

    alone = {n: kl([n]) for n in tqdm(layers, desc="one layer W8A8 at a time")}
    ranked = sorted(layers, key=alone.get, reverse=True)
    print(f"{len(layers)} MLP output projections of {run}; calibration {args.nsamples} x {args.seqlen} of {source}, "
          f"KL/token on {len(held_out)} held-out windows, SmoothQuant alpha {args.alpha}")
    print(f"{'layer':40s} {'KL/token, this layer alone W8A8':>32s}")
    for n in ranked:
        print(f"{n:40s} {alone[n]:32.4f}")
    print(f"all W8A8: {kl(list(layers)):.4f} KL/token (sum of the layers alone: {sum(alone.values()):.4f})")
    for k in (int(k) for k in args.keep.split(",") if k):
        scope = ",".join(["lm_head"] + ranked[:k])  # the export's default keeps the head float too
        print(f"all but the {k} most sensitive W8A8: {kl(ranked[k:]):.4f} KL/token; export --ignored-scopes '{scope}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
