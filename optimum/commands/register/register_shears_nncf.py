"""``optimum-cli export shears``: the Shears export (unmerged adapters, W8A8 for the CPU sparse kernel) from
optimum-cli, with the argument names of ``optimum-cli export openvino``.

optimum-cli imports every module of the ``optimum.commands.register`` namespace package and registers its
``REGISTER_COMMANDS``; this module stays import-light (shears_nncf loads only when the command runs)::

    optimum-cli export shears -m SPARSE_DIR --adapter SUB_ADAPTER --quant-mode int8 --dataset calib.jsonl IR_DIR
    optimum-cli export shears -m SPARSE_DIR --adapter SUB_A --adapter SUB_B --adapter-mode runtime IR_DIR
    optimum-cli export shears -m SPARSE_DIR --adapter MASKED_SUB --merge IR_DIR

It is a thin layer over :func:`shears_nncf.exporting.export`: the same checks, the same IR, the same summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo
from optimum.commands.export.base import ExportCommand

if TYPE_CHECKING:
    from argparse import ArgumentParser

#: --weight-format / --quant-mode of `optimum-cli export openvino` -> shears-nncf's --quantize.
WEIGHT_FORMATS = {"fp32": "none", "int8": "int8-weights", "int4": "int4-weights"}


def parse_args_shears(parser: "ArgumentParser") -> None:
    required = parser.add_argument_group("Required arguments")
    required.add_argument("-m", "--model", required=True, help="the sparse Hugging Face model folder (stage 1 output)")
    required.add_argument("output", type=Path, help="folder for the OpenVINO IR")
    optional = parser.add_argument_group("Optional arguments")
    optional.add_argument(
        "--adapter",
        action="append",
        help="PEFT LoRA adapter folder, exported UNMERGED beside "
        "the sparse weights; repeat it with --adapter-mode runtime for several on one base IR",
    )
    optional.add_argument(
        "--adapter-mode",
        choices=["in-ir", "runtime"],
        help="in-ir (default): the adapter's MatMuls "
        "in the IR; runtime: the base IR + genai_adapters/NAME.safetensors for OpenVINO GenAI",
    )
    optional.add_argument(
        "--merge",
        action="store_true",
        help="merge a sparsity-masked adapter (shears-nncf train "
        "--sparse-adapter) into the sparse weights: no adapter MatMuls",
    )
    quant = optional.add_mutually_exclusive_group()
    quant.add_argument(
        "--quant-mode",
        choices=["int8"],
        help="int8: W8A8 (int8 weights and activations), the mode OpenVINO's sparse CPU kernel needs; the default",
    )
    quant.add_argument(
        "--weight-format",
        choices=sorted(WEIGHT_FORMATS),
        help="weight-only precision instead of W8A8 (for CPUs without AMX; no sparse kernel)",
    )
    optional.add_argument(
        "--dataset",
        help="W8A8 calibration: a text / JSON-lines file or a Hugging Face dataset name "
        "(default: the C4 sample that Wanda used)",
    )
    optional.add_argument("--num-samples", type=int, help="number of calibration windows")
    optional.add_argument(
        "--sparse-rate", help="CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE: 'auto' (default) or a number in [0, 1]"
    )
    optional.add_argument("--trust-remote-code", action="store_true", help="allow the model folder to run its own code")
    optional.add_argument("-v", "--verbose", action="store_true", help="NNCF's own log lines too")


class ShearsExportCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(
        name="shears", help="Export a Shears sparse model + LoRA adapter to OpenVINO IR (shears-nncf)."
    )

    @staticmethod
    def parse_args(parser: "ArgumentParser"):
        return parse_args_shears(parser)

    def run(self):
        import logging

        from nncf.common.logging.logger import set_log_level

        from shears_nncf.config import ExportConfig
        from shears_nncf.config_file import with_overrides
        from shears_nncf.errors import ShearsError
        from shears_nncf.exporting import export, format_report
        from shears_nncf.options import from_text

        a = self.args
        set_log_level(logging.DEBUG if a.verbose else logging.WARNING)  # NNCF's "Not adding ..." line per MatMul
        try:
            config = with_overrides(
                ExportConfig(),
                quantize=WEIGHT_FORMATS.get(a.weight_format, "w8a8"),
                calibration=a.dataset,
                nsamples=a.num_samples,
                adapter_mode=a.adapter_mode,
                merge=a.merge or None,
                sparse_rate=from_text(ExportConfig, "sparse_rate", a.sparse_rate),
            )
            report = export(a.model, a.output, adapter=a.adapter, config=config, trust_remote_code=a.trust_remote_code)
        except ShearsError as e:
            print(f"optimum-cli export shears: error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("optimum-cli export shears: interrupted", file=sys.stderr)
            sys.exit(130)
        print(format_report(report, a.output))


REGISTER_COMMANDS = [(ShearsExportCommand, ExportCommand)]
