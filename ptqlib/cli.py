"""The command line: ``python -m ptqlib <command>``.

Every command reports problems as one line on stderr and a non-zero exit status (2),
never as a Python traceback: errors that mean bad input are raised as ValueError or
OSError (FileNotFoundError...) by the library, and caught here. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ptqlib.data import calibration_images, load_mnist
from ptqlib.models import MODELS
from ptqlib.observers import OBSERVERS
from ptqlib.pipeline import BATCH_SIZES
from ptqlib.training import DEFAULT_EPOCHS, DEFAULT_EPOCHS_BY_MODEL, DEFAULT_SEED

EXIT_ERROR = 2
# Activations get one scale per tensor: every observer except the per-channel one.
ACTIVATION_OBSERVERS = sorted(name for name in OBSERVERS if not name.startswith("per_channel"))


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
    parser.add_argument("--model", choices=sorted(MODELS), default=default, help=help_text)


def add_low_bit_options(parser: argparse.ArgumentParser) -> None:
    """Bit widths and the fixes of ptqlib.low_bit; checked by LowBitSettings (one line, exit 2)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m ptqlib",
        description="Post-training quantization of SimpleNet on MNIST, from scratch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train the FP32 SimpleNet (or --model cnn) and save a checkpoint"
    )
    add_model_option(
        train,
        "simplenet (the MLP) or cnn (notebook 07's SmallCNN); default simplenet",
        "simplenet",
    )
    train.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=f"passes over the training split (default {DEFAULT_EPOCHS} for simplenet, "
        f"{DEFAULT_EPOCHS_BY_MODEL['cnn']} for cnn)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed for initialisation and shuffling (default {DEFAULT_SEED})",
    )
    add_data_option(train)
    train.add_argument(
        "--out",
        default=None,
        help="where to write the checkpoint (default artifacts/<model>_fp32.pt)",
    )
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of an FP32 or INT8 checkpoint")
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint written by ptqlib, or a .onnx file written by export (run in ONNX "
        "Runtime)",
    )
    add_data_option(evaluate)
    evaluate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (accuracy, n_test, kind, size_bytes, runtime)",
    )
    evaluate.set_defaults(handler=run_evaluate)

    quantize = commands.add_parser(
        "quantize", help="calibrate an FP32 checkpoint and write the INT8 model"
    )
    quantize.add_argument("--checkpoint", required=True, help="the FP32 checkpoint to quantize")
    quantize.add_argument("--out", required=True, help="where to write the INT8 checkpoint")
    add_calibration_options(quantize)
    add_model_option(
        quantize, "the model the checkpoint must hold (default: the one it records)", None
    )
    quantize.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per layer instead of one per output channel",
    )
    add_data_option(quantize)
    add_low_bit_options(quantize)
    quantize.set_defaults(handler=run_quantize)

    diagnose = commands.add_parser(
        "diagnose", help="per-layer SQNR of an INT8 checkpoint against its FP32 model"
    )
    diagnose.add_argument("--checkpoint", required=True, help="an INT8 checkpoint")
    diagnose.add_argument(
        "--fp32",
        default=None,
        help="the FP32 checkpoint it was quantized from (default: the one its meta names)",
    )
    add_data_option(diagnose)
    diagnose.add_argument("--json", action="store_true", help="print the table as JSON")
    diagnose.set_defaults(handler=run_diagnose)

    pipeline = commands.add_parser(
        "pipeline",
        help="baseline -> calibrate -> INT8 with ptqlib and torch.ao -> accuracy, size, latency",
    )
    for add_options in (add_data_option, add_calibration_options, add_threads_option):
        add_options(pipeline)
    add_model_option(pipeline, "simplenet or cnn (default simplenet)", "simplenet")
    pipeline.add_argument(
        "--out", default="results", help="folder for results.json and results.md (default results/)"
    )
    pipeline.set_defaults(handler=run_pipeline)

    export = commands.add_parser(
        "export", help="write an INT8 (or FP32) checkpoint as an ONNX model (QDQ graph)"
    )
    export.add_argument("--checkpoint", required=True, help="an INT8 or FP32 ptqlib checkpoint")
    export.add_argument("--out", required=True, help="where to write the .onnx file")
    export.set_defaults(handler=run_export)

    bench = commands.add_parser(
        "bench",
        help="latency of FP32, ptqlib INT8 (fast and teaching path) and torch.ao INT8 here",
    )
    for add_options in (add_data_option, add_calibration_options, add_threads_option):
        add_options(bench)
    add_model_option(bench, "simplenet or cnn (default simplenet)", "simplenet")
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
        choices=["onnxruntime", "pt2e"],
        default=[],
        help="also time the models in ONNX Runtime (FP32 and INT8) and/or torchao's PT2E "
        "INT8 compiled by torch.compile",
    )
    bench.set_defaults(handler=run_bench)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from ptqlib.checkpoints import save_fp32
    from ptqlib.evaluation import accuracy
    from ptqlib.paths import artifacts_dir
    from ptqlib.training import train, training_meta

    data = load_mnist(args.data_dir)
    epochs = args.epochs or DEFAULT_EPOCHS_BY_MODEL[args.model]
    result = train(data, epochs=epochs, seed=args.seed, model=args.model)
    meta = training_meta(result, data, epochs, args.seed)
    out = args.out or artifacts_dir() / f"{args.model}_fp32.pt"
    path = save_fp32(result.model, out, meta)
    print(
        f"trained {args.model} for {epochs} epochs in {result.seconds:.1f} s; "
        f"test accuracy {accuracy(result.model, data.test):.2%}; saved {path}"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ptqlib.evaluation import accuracy
    from ptqlib.int8_checkpoint import load_model

    is_onnx = Path(args.checkpoint).suffix.lower() == ".onnx"
    if is_onnx:
        from ptqlib.onnx_runtime import load_onnx_model

        model = load_onnx_model(args.checkpoint)
        kind = model.kind
    else:
        model, kind, _ = load_model(args.checkpoint)
    data = load_mnist(args.data_dir, splits=("test",), verbose=False)
    # With --json, stdout holds only the JSON object; the data line goes to stderr.
    print(data.describe(), file=sys.stderr if args.json else sys.stdout)
    result = {
        "checkpoint": args.checkpoint,
        "kind": kind,
        "accuracy": round(accuracy(model, data.test), 6),
        "n_test": len(data.test),
        "data_source": data.source,
        "size_bytes": Path(args.checkpoint).stat().st_size,
        "runtime": "onnxruntime" if is_onnx else "pytorch",
        **({} if is_onnx else bit_widths(model, kind)),
    }
    if args.json:
        print(json.dumps(result))
    else:
        what = "ONNX model, run in ONNX Runtime" if is_onnx else "checkpoint"
        print(
            f"loaded an {kind.upper()} {what} ({result['size_bytes']:,} bytes): test accuracy "
            f"{result['accuracy']:.2%} on {result['n_test']:,} digits"
        )
    return 0


def low_bit_requested(args: argparse.Namespace) -> bool:
    """Any low-bit option away from its default (else the plain INT8 path runs, as before)."""
    return (
        args.weight_bits != 8
        or args.activation_bits != 8
        or args.rounding != "nearest"
        or args.bias_correction
        or args.weight_clipping != "minmax"
        or args.layer_bits is not None
    )


def bit_widths(model, kind: str) -> dict:
    """The weight bits per layer and the activation bits of a model (32 for FP32)."""
    if kind != "int8":
        return {"weight_bits": 32, "activation_bits": 32}
    from ptqlib.int8_model import Int8Linear
    from ptqlib.packing import bits_for_range

    linears = [layer for layer in model.layers if isinstance(layer, Int8Linear)]
    activation = {
        bits_for_range(layer.output_qparams.quant_min, layer.output_qparams.quant_max)
        for layer in linears
    }
    return {
        "weight_bits": {layer.name: bits_for_range(*layer.weight_range) for layer in linears},
        "activation_bits": max(activation),
    }


def run_diagnose(args: argparse.Namespace) -> int:
    from ptqlib.checkpoints import load_fp32
    from ptqlib.diagnose import diagnose, diagnosis_json, diagnosis_table
    from ptqlib.int8_checkpoint import load_int8

    int8_model, meta = load_int8(args.checkpoint)
    fp32_path = args.fp32 or meta.get("source_path")
    if fp32_path is None or not Path(fp32_path).is_file():
        raise ValueError(
            f"no FP32 checkpoint to compare with (the meta names {fp32_path!r}); give --fp32"
        )
    fp32, _ = load_fp32(fp32_path)
    data = load_mnist(args.data_dir, splits=("test",), verbose=False)
    rows = diagnose(fp32, int8_model, data.test.images)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "layers": diagnosis_json(rows)}))
    else:
        print(f"{data.describe()}\nSQNR of every layer's output against FP32:")
        print(diagnosis_table(rows))
    return 0


def run_quantize_low_bit(args: argparse.Namespace) -> int:
    from ptqlib.low_bit import LowBitSettings, parse_layer_bits
    from ptqlib.pipeline import quantize_checkpoint_low_bit

    layer_bits = {}
    if args.layer_bits is not None:
        layer_bits = parse_layer_bits(args.layer_bits)  # names: checked against the model
    settings = LowBitSettings(
        weight_bits=args.weight_bits,
        activation_bits=args.activation_bits,
        rounding=args.rounding,
        clipping=args.weight_clipping,
        bias_correction=args.bias_correction,
        per_channel=not args.per_tensor,
        layer_bits=layer_bits,
        adaround_kwargs={"seed": args.seed, "iterations": args.adaround_iterations},
    )
    result = quantize_checkpoint_low_bit(
        args.checkpoint, args.out, settings, args.observer, args.calib, args.data_dir
    )
    bits = ",".join(f"{name}={width}" for name, width in result.meta["weight_bits"].items())
    print(
        f"weights {bits} ({args.rounding}, {args.weight_clipping} clipping"
        f"{', bias correction' if args.bias_correction else ''}) in "
        f"{result.meta['weight_seconds']:.2f} s, activations {args.activation_bits} bits; wrote "
        f"{result.path} ({result.int8_bytes:,} bytes, {result.size_ratio:.2f}x smaller than FP32)"
    )
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from ptqlib.pipeline import quantize_checkpoint

    if low_bit_requested(args):
        return run_quantize_low_bit(args)

    result = quantize_checkpoint(
        args.checkpoint,
        args.out,
        observer=args.observer,
        calib=args.calib,
        per_channel=not args.per_tensor,
        data_dir=args.data_dir,
        expected_model=args.model,
    )
    print(
        f"calibrated on {args.calib:,} images with the {args.observer} observer; wrote "
        f"{result.path} ({result.int8_bytes:,} bytes, {result.size_ratio:.2f}x smaller than FP32)"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ptqlib.int8_checkpoint import load_model
    from ptqlib.onnx_export import OPSET, fp32_to_onnx, int8_to_onnx, save_onnx

    model, kind, _ = load_model(args.checkpoint)
    onnx_model = int8_to_onnx(model) if kind == "int8" else fp32_to_onnx(model)
    path = save_onnx(onnx_model, args.out)
    print(
        f"wrote {path}: the {kind.upper()} model as ONNX (opset {OPSET}, "
        f"{path.stat().st_size:,} bytes); the ONNX checker passed"
    )
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    from ptqlib.pipeline import results_markdown, run_pipeline

    results = run_pipeline(
        args.data_dir, args.calib, args.observer, args.out, args.threads, model=args.model
    )
    print(results_markdown(results))
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'results.md'}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ptqlib.hardware import machine_info
    from ptqlib.pipeline import (
        build_models,
        latency_markdown,
        latency_rows,
        latency_table,
        machine_line,
    )

    data = load_mnist(args.data_dir, verbose=not args.json)
    models, _, settings = build_models(
        data, args.calib, args.observer, progress=not args.json, model=args.model
    )
    if "onnxruntime" in args.runtime:
        from ptqlib.onnx_runtime import onnx_runtime_models

        teaching = models["int8_ptqlib_teaching"]
        models.update(onnx_runtime_models(models["fp32"], teaching, args.threads))
    if "pt2e" in args.runtime:
        from ptqlib.reference_pt2e import pt2e_compiled_model

        images = calibration_images(data.train, args.calib)
        models["int8_pt2e"] = pt2e_compiled_model(models["fp32"], images).model
    rows = latency_rows(latency_table(models, tuple(args.batch_sizes), args.threads))
    machine = machine_info(args.threads)
    if args.json:
        print(json.dumps({"machine": machine, "settings": settings, "latency": rows}))
        return 0
    print(machine_line(machine))
    print(f"ptqlib's fast path accumulates with the {settings['ptqlib_accumulator']}.")
    print("Latency per batch: median ms of 21 interleaved repeats (interquartile range) and")
    print("throughput relative to FP32 (above 1: faster than FP32):")
    print("\n".join(latency_markdown(rows)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    # Bad input (a missing or broken file, a wrong setting) is reported in one line. Any other
    # exception, a TypeError included, is a bug in ptqlib: it keeps its traceback.
    except (ValueError, OSError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
