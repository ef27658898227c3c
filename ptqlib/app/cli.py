"""The command line: ``python -m ptqlib <command>``.

Every command reports problems as one line on stderr and a non-zero exit status (2),
never as a Python traceback: errors that mean bad input are raised as
``ptqlib.errors.InputError`` (a ValueError) or OSError (FileNotFoundError...) by the library,
and caught here. Anything else, a plain ValueError or TypeError included, is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

# Only what --help needs: plain names and defaults. The commands import torch and the library
# when they run (``ptqlib.app.commands``), so --help and a usage error answer at once.
from ptqlib.app import commands
from ptqlib.catalog import (
    ACTIVATION_OBSERVERS,
    BATCH_SIZES,
    DEFAULT_EPOCHS,
    DEFAULT_EPOCHS_BY_MODEL,
    DEFAULT_RECIPE,
    DEFAULT_SEED,
    MODEL_NAMES,
    RECIPE_NAMES,
    RECIPE_SEEDS,
)
from ptqlib.deploy.mcu.targets import PARTS, TARGETS  # plain data, no torch
from ptqlib.errors import InputError
from ptqlib.formats import FORMAT_NAMES

EXIT_ERROR = 2
# --requantization's choices, spelled for the command line (ptqlib.integer_arithmetic's names
# with a hyphen).
REQUANTIZATIONS = ["fixed-point", "float32"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like the commands' own errors."""

    def error(self, message: str) -> None:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


DATA_HELP = (
    "directory with the MNIST IDX files (default: $PTQLIB_DATA_DIR, else the repository's "
    "data/; without them MNIST is downloaded, or the offline sample is used)"
)


def add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=DATA_HELP)
    parser.add_argument(
        "--download",
        action="store_true",
        help="try torchvision's download of MNIST again, although it failed before (without "
        "this, a failed download is noted in the data directory and not retried)",
    )


def add_calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--observer",
        default="histogram",
        choices=ACTIVATION_OBSERVERS,
        help="activation observer (default histogram)",
    )
    parser.add_argument(
        "--calib",
        type=positive_int,
        default=1000,
        help="number of class-balanced training images to calibrate on (default 1000)",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=2,
        help="CPU threads for the latency measurements (default 2)",
    )


def add_model_option(parser: argparse.ArgumentParser, help_text: str, default: str | None) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default=default, help=help_text)


def add_low_bit_options(parser: argparse.ArgumentParser) -> None:
    """Bit widths and the fixes of ptqlib.lowbit.weights; checked by LowBitSettings (one line,
    exit 2)."""
    parser.add_argument("--weight-bits", type=int, default=8, help="weight bits, 2-8 (default 8)")
    parser.add_argument(
        "--activation-bits", type=int, default=8, help="activation bits, 4-8 (default 8)"
    )
    parser.add_argument(
        "--rounding",
        default="nearest",
        choices=["nearest", "adaround", "gptq"],
        help="how weights are rounded (default nearest)",
    )
    parser.add_argument(
        "--bias-correction", action="store_true", help="remove the mean output shift per layer"
    )
    parser.add_argument(
        "--weight-clipping",
        default="minmax",
        choices=["minmax", "mse"],
        help="per-channel clipping value: the largest |w| or the MSE-optimal one (default minmax)",
    )
    parser.add_argument(
        "--layer-bits",
        default=None,
        help="weight bits per layer, overriding --weight-bits, e.g. fc1=8,fc2=4,fc3=8",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of AdaRound's batches (default 0)"
    )
    parser.add_argument(
        "--adaround-iterations",
        type=positive_int,
        default=400,
        help="AdaRound's Adam steps per layer (default 400)",
    )


def run_grade(args: argparse.Namespace) -> int:
    """The ``grade`` command, imported when it runs: it needs nbformat, jupyter_client and
    ipykernel, which come with the dev extras, and the other commands must work without
    them."""
    needed = ("nbformat", "jupyter_client", "ipykernel")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(
            f"grade needs {' and '.join(missing)} to run notebooks; install the dev extras: "
            "pip install -e '.[dev]'"
        )
    from ptqlib.classroom.grade_report import run_grade as grade_submissions

    return grade_submissions(args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m ptqlib",
        description="Post-training quantization of SimpleNet on MNIST, from scratch.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = subcommands.add_parser(
        "train", help="train the FP32 SimpleNet (or --model cnn) and save a checkpoint"
    )
    add_model_option(
        train,
        "simplenet (the MLP), cnn (notebook 07's SmallCNN) or dwcnn (notebook 09's "
        "DepthwiseCNN); default simplenet",
        "simplenet",
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"passes over the training split (default {DEFAULT_EPOCHS} for simplenet, "
        f"{DEFAULT_EPOCHS_BY_MODEL['cnn']} for cnn, {DEFAULT_EPOCHS_BY_MODEL['dwcnn']} for dwcnn)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"seed for initialisation and shuffling (default {DEFAULT_SEED}; "
        f"{RECIPE_SEEDS[('dwcnn', 'hot')]} for dwcnn's hot recipe, the seed of notebook 09's "
        "shipped model)",
    )
    train.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        choices=sorted({name for names in RECIPE_NAMES.values() for name in names}),
        help="optimizer settings (default: default); dwcnn also has 'hot' (SGD, lr 2.0: "
        "notebook 09's model that breaks under per-tensor INT8)",
    )
    add_data_option(train)
    train.add_argument(
        "--out",
        default=None,
        help="where to write the checkpoint (default artifacts/<model>_fp32.pt)",
    )
    train.set_defaults(handler=commands.run_train)

    evaluate = subcommands.add_parser(
        "evaluate", help="test accuracy of an FP32, INT8 or number-format checkpoint"
    )
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint written by ptqlib, or a .onnx file written by export (run in ONNX "
        "Runtime), or a directory written by export --format c (compiled and run as C)",
    )
    add_data_option(evaluate)
    evaluate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (accuracy, n_test, kind, size_bytes, runtime)",
    )
    evaluate.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default=None,
        help="a directory written by export --target: build its firmware with arm-none-eabi-gcc, "
        "run the test split in QEMU and compare every output with ptqlib (notebook 11)",
    )
    evaluate.set_defaults(handler=commands.run_evaluate)

    quantize = subcommands.add_parser(
        "quantize",
        help="calibrate an FP32 checkpoint and write the INT8 model (or, with --format, the "
        "model in a number format)",
    )
    quantize.add_argument("--checkpoint", required=True, help="the FP32 checkpoint to quantize")
    quantize.add_argument("--out", required=True, help="where to write the checkpoint")
    quantize.add_argument(
        "--format",
        default=None,
        choices=FORMAT_NAMES,
        help="a number format instead of INT8 (notebook 12): the weights, and the activations "
        "of the formats meant for them (fp8-e4m3, mx*, nvfp4), calibrated on --calib images",
    )
    add_calibration_options(quantize)
    add_model_option(
        quantize, "the model the checkpoint must hold (default: the one it records)", None
    )
    quantize.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per layer instead of one per output channel",
    )
    quantize.add_argument(
        "--equalize",
        action="store_true",
        help="cross-layer equalization (ptqlib.equalization) of the folded CNN before "
        "calibrating: a data-free repair for --per-tensor",
    )
    quantize.add_argument(
        "--pixel-input",
        action="store_true",
        help="fold the input normalisation into fc1, so the INT8 model reads raw uint8 "
        "pixels (S = 1, Z = 0; SimpleNet, 8 bits): what the pipeline does",
    )
    quantize.add_argument(
        "--requantization",
        choices=REQUANTIZATIONS,
        default="fixed-point",
        help="how each layer rounds its int32 sums: fixed-point (M0 2^-n, the default) or "
        "float32 (ONNX Runtime's arithmetic, notebook 08)",
    )
    add_data_option(quantize)
    add_low_bit_options(quantize)
    quantize.set_defaults(handler=commands.run_quantize)

    layer_errors = subcommands.add_parser(
        "layer-errors",
        help="measure a quantized checkpoint: each layer's SQNR against its FP32 model",
    )
    layer_errors.add_argument(
        "--checkpoint", required=True, help="an INT8 checkpoint, or one written with --format"
    )
    layer_errors.add_argument(
        "--fp32",
        default=None,
        help="the FP32 checkpoint it was quantized from (default: the one its meta names)",
    )
    add_data_option(layer_errors)
    layer_errors.add_argument("--json", action="store_true", help="print the table as JSON")
    layer_errors.set_defaults(handler=commands.run_layer_errors)

    find_culprit = subcommands.add_parser(
        "find-culprit",
        help="experiment on an FP32 checkpoint: which layer breaks it under INT8, and the repairs",
    )
    find_culprit.add_argument("--checkpoint", required=True, help="an FP32 checkpoint (a CNN)")
    find_culprit.add_argument(
        "--observer",
        default="minmax",
        choices=ACTIVATION_OBSERVERS,
        help="activation observer (default minmax)",
    )
    find_culprit.add_argument(
        "--calib",
        type=positive_int,
        default=500,
        help="class-balanced training images to calibrate on (default 500)",
    )
    find_culprit.add_argument(
        "--sweeps", type=positive_int, default=20, help="CLE sweeps over all pairs (default 20)"
    )
    add_data_option(find_culprit)
    find_culprit.add_argument("--json", action="store_true", help="print the report as JSON")
    find_culprit.set_defaults(handler=commands.run_find_culprit)

    pipeline = subcommands.add_parser(
        "pipeline",
        help="baseline -> calibrate -> INT8 with ptqlib and torch.ao -> accuracy, size, latency",
    )
    for add_options in (add_data_option, add_calibration_options, add_threads_option):
        add_options(pipeline)
    add_model_option(pipeline, "simplenet, cnn or dwcnn (default simplenet)", "simplenet")
    pipeline.add_argument(
        "--out", default="results", help="folder for results.json and results.md (default results/)"
    )
    pipeline.set_defaults(handler=commands.run_pipeline)

    export = subcommands.add_parser(
        "export", help="write an INT8 (or FP32) checkpoint as an ONNX model (QDQ graph)"
    )
    export.add_argument("--checkpoint", required=True, help="an INT8 or FP32 ptqlib checkpoint")
    export.add_argument(
        "--out", required=True, help="where to write the .onnx file (with --format c: a directory)"
    )
    export.add_argument(
        "--format",
        choices=["onnx", "c"],
        default="onnx",
        help="onnx (default) or c: a dependency-free C99 header + source, main.c and BUILD "
        "written into the directory --out (notebook 10)",
    )
    export.add_argument(
        "--target",
        choices=sorted(TARGETS),
        default=None,
        help="with --format c: also write Cortex-M firmware (startup, semihosting, linker "
        "script, the DSP kernel for INT8) for this core, run in QEMU (notebook 11)",
    )
    export.add_argument(
        "--part",
        choices=sorted(PARTS),
        default=None,
        help="with --target: the chip whose flash and RAM the linker script holds (default "
        "stm32l412kb for cortex-m4, stm32f767zi for cortex-m7)",
    )
    export.add_argument(
        "--rounding",
        choices=["single", "double"],
        default="single",
        help="with --target: the DSP kernel's requantization: single (ptqlib's, = CMSIS-NN with "
        "CMSIS_NN_USE_SINGLE_ROUNDING) or double (CMSIS-NN's default arm_nn_requantize)",
    )
    export.set_defaults(handler=commands.run_export)

    bench = subcommands.add_parser(
        "bench",
        help="latency of FP32, ptqlib INT8 (fast and teaching path) and torch.ao INT8 here",
    )
    for add_options in (add_data_option, add_calibration_options, add_threads_option):
        add_options(bench)
    add_model_option(bench, "simplenet, cnn or dwcnn (default simplenet)", "simplenet")
    bench.add_argument(
        "--batch-sizes",
        type=positive_int,
        nargs="+",
        default=list(BATCH_SIZES),
        help="batch sizes to time (default 1 64 1024)",
    )
    bench.add_argument(
        "--json", action="store_true", help="print one JSON object (machine, settings, latency)"
    )
    bench.add_argument(
        "--runtime",
        nargs="+",
        choices=["onnxruntime", "pt2e", "c"],
        default=[],
        help="also time the models in ONNX Runtime (FP32 and INT8), torchao's PT2E "
        "INT8 compiled by torch.compile and/or exported as C (compiled with the system C "
        "compiler, called through ctypes)",
    )
    bench.set_defaults(handler=commands.run_bench)

    grade = subcommands.add_parser(
        "grade",
        help="run handed-in student notebooks, each in a sandbox (bubblewrap), and grade "
        "their exercises from their answers",
    )
    grade.add_argument(
        "submissions",
        metavar="SUBMISSIONS",
        help="folder of hand-ins: one notebook per student (alice.ipynb) or one subfolder "
        "per student",
    )
    grade.add_argument(
        "--out", default="grades.csv", help="the CSV grade sheet to write (default grades.csv)"
    )
    grade.add_argument(
        "--timeout",
        type=positive_int,
        default=None,
        help="seconds one cell may run before its notebook is stopped (default 120)",
    )
    grade.add_argument(
        "--notebook-timeout",
        type=positive_int,
        default=None,
        help="seconds a whole notebook may run (default 600)",
    )
    grade.add_argument(
        "--memory",
        type=positive_int,
        default=None,
        help="MiB of memory a notebook's processes may use together, where a control group "
        "can be made (default 4096)",
    )
    grade.add_argument(
        "--jobs", type=positive_int, default=1, help="notebooks graded at once (default 1)"
    )
    grade.add_argument(
        "--json", action="store_true", help="print the rows as JSON instead of the table"
    )
    grade.set_defaults(handler=run_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "download", False):
            from ptqlib.data import forget_download_failure

            forget_download_failure(args.data_dir)
        return args.handler(args)
    # Bad input (a missing or broken file, a wrong setting) is reported in one line. Any other
    # exception, a TypeError included, is a bug in ptqlib: it keeps its traceback.
    except (InputError, OSError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
