"""Accuracy of finished `accuracy_table.py --scoring likelihood` rows on the first N questions of each test set.

A study run with ``--limit N`` scores only the first N questions; this recomputes the same subset from the per-question
samples of a full-set study, so the two can be set side by side without scoring again::

    python benchmarks/subset_accuracy.py /tmp/ls2/commonsense --limit 500
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="an accuracy_table --work/SUITE folder (one sub-folder per sparsity)")
    p.add_argument("--limit", type=int, required=True)
    args = p.parse_args(argv)
    for f in sorted(args.folder.glob("*/*_samples.json")):
        samples = json.loads(f.read_text())["samples"]
        accs = {t: sum(q["prediction"] == q["label"] for q in qs[: args.limit]) / len(qs[: args.limit]) for t, qs in samples.items()}
        cells = " ".join(f"{t} {100 * a:.1f}" for t, a in accs.items())
        print(f"{f.parent.name}/{f.name.removesuffix('_samples.json')}: {cells}, mean {100 * sum(accs.values()) / len(accs):.1f}")


if __name__ == "__main__":
    main()
