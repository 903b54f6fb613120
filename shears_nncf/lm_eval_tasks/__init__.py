"""lm-evaluation-harness task files for the LLM-Adapters commonsense test sets, scored as ``shears-nncf eval
--scoring likelihood`` scores them (:mod:`shears_nncf.likelihood` parses each record; no prompt is written twice).

The test sets are read from the data folder (``$SHEARS_NNCF_DATA/llm_adapters/TASK/test.json``); none ship here::

    lm_eval --model openvino --model_args pretrained=IR,ov_config=IR/ov_config.json --tasks shears_arc_easy \\
            --include_path "$(python -c 'import shears_nncf.lm_eval_tasks as t; print(t.TASK_DIR)')"
"""

from pathlib import Path

#: the folder to pass to ``lm_eval --include_path``
TASK_DIR = str(Path(__file__).parent)
#: lm-eval task name -> the LLM-Adapters task it scores
TASKS = {
    "shears_boolq": "boolq",
    "shears_arc_easy": "ARC-Easy",
    "shears_arc_challenge": "ARC-Challenge",
    "shears_openbookqa": "openbookqa",
    "shears_piqa": "piqa",
    "shears_social_i_qa": "social_i_qa",
    "shears_winogrande": "winogrande",
}
