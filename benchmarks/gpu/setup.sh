# Source on the GPU box, from the repository root, once every .gpu/pNN of benchmarks/gpu/prepare.sh is there:
#   source benchmarks/gpu/setup.sh
# Installs the carried wheels into /tmp/site (ahead of the box's own packages), points the package at the carried
# data and checks that the stack imports. Nothing is fetched: the box is offline. A later call on the same (still
# warm) box finds /tmp/site/.installed and only sets the environment.
if [ ! -f /tmp/site/.installed ]; then
    rm -rf /tmp/gpu && mkdir -p /tmp/gpu && cat .gpu/p*/part | tar xf - -C /tmp/gpu || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        /tmp/gpu/whl/*.whl || return 1
    touch /tmp/site/.installed
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" SHEARS_NNCF_DATA=/tmp/gpu/data
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "
import torch, transformers, peft, datasets, pymoo, jsonschema, nncf, openvino, optimum.intel, shears_nncf
from shears_nncf.models import resolve_model_path
print('torch', torch.__version__, '| cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      '| transformers', transformers.__version__, '| nncf', nncf.__version__, '| openvino', openvino.__version__,
      '| model', resolve_model_path('smollm2-135m'))
" || return 1
