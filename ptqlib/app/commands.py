"""What each command of ``python -m ptqlib`` does (``ptqlib.app.cli`` holds the parser).

Each ``run_<command>(args)`` takes the parsed arguments, does the work through the library
and prints the result; it returns the exit status. The library modules are imported inside
the handlers, so ``--help`` and a usage error answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ptqlib.app.c_commands import (
    export_as_c,
    export_as_firmware,
    run_evaluate_c,
    run_evaluate_firmware,
)
from ptqlib.errors import InputError

if TYPE_CHECKING:  # imported inside the handlers, so --help answers at once
    from ptqlib.app.quantize import QuantizeSettings


def run_train(args: argparse.Namespace) -> int:
    from ptqlib.catalog import default_seed
    from ptqlib.checkpoints import save_fp32
    from ptqlib.data import load_mnist
    from ptqlib.evaluation import accuracy
    from ptqlib.paths import artifacts_dir
    from ptqlib.training import DEFAULT_EPOCHS_BY_MODEL, recipe_for, train, training_meta

    recipe_for(args.model, args.recipe)  # a recipe the model lacks fails before any work
    data = load_mnist(args.data_dir)
    epochs = args.epochs or DEFAULT_EPOCHS_BY_MODEL[args.model]
    seed = default_seed(args.model, args.recipe) if args.seed is None else args.seed
    result = train(data, epochs=epochs, seed=seed, model=args.model, recipe=args.recipe)
    meta = training_meta(result, data, epochs, seed, args.recipe)
    stem = args.model if args.recipe == "default" else f"{args.model}_{args.recipe}"
    out = args.out or artifacts_dir() / f"{stem}_fp32.pt"
    path = save_fp32(result.model, out, meta)
    print(
        f"trained {args.model} for {epochs} epochs in {result.seconds:.1f} s; "
        f"test accuracy {accuracy(result.model, data.test):.2%}; saved {path}"
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ptqlib.app.model_files import load_model
    from ptqlib.checkpoints import KIND_NAMES
    from ptqlib.data import load_mnist
    from ptqlib.evaluation import accuracy

    if getattr(args, "target", None):
        return run_evaluate_firmware(args)
    if Path(args.checkpoint).is_dir():
        return run_evaluate_c(args)
    is_onnx = Path(args.checkpoint).suffix.lower() == ".onnx"
    if is_onnx:
        from ptqlib.deploy.onnx_runtime import load_onnx_model

        model = load_onnx_model(args.checkpoint)
        kind = model.kind
    else:
        model, kind, meta = load_model(args.checkpoint)
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
    if kind == "formats":  # what the file holds and how its arithmetic ran
        result.update(
            format=meta["format"],
            weight_bits=meta["bits_per_weight"],
            activation_bits=meta["activation_bits"],
            arithmetic=meta["arithmetic"],
        )
    if args.json:
        print(json.dumps(result))
    else:
        what = "ONNX model, run in ONNX Runtime" if is_onnx else "checkpoint"
        print(
            f"loaded {KIND_NAMES[kind]} {what} "
            f"({result['size_bytes']:,} bytes): test accuracy {result['accuracy']:.2%} on "
            f"{result['n_test']:,} digits"
        )
        if kind == "formats":
            inputs = " and activations" if meta["activations"] else ""
            print(
                f"{meta['format']} weights{inputs} ({meta['bits_per_weight']:.3f} bits per "
                f"weight); arithmetic {meta['arithmetic']}"
            )
    return 0


def bit_widths(model, kind: str) -> dict:
    """The weight bits of every layer with weights (Linear and Conv2d) and the activation
    bits of a model (32 for FP32)."""
    if kind != "int8":
        return {"weight_bits": 32, "activation_bits": 32}
    from ptqlib.app.quantize import activation_bits, weight_bits

    return {"weight_bits": weight_bits(model), "activation_bits": activation_bits(model)}


def run_layer_errors(args: argparse.Namespace) -> int:
    from ptqlib.checkpoints import load_checkpoint, load_fp32
    from ptqlib.data import load_mnist
    from ptqlib.int8_checkpoint import load_int8
    from ptqlib.lowbit.layer_errors import layer_error_json, layer_error_table, layer_errors
    from ptqlib.models import model_name

    if load_checkpoint(args.checkpoint)["kind"] == "formats":
        from ptqlib.formats.command import layer_error_report

        print(layer_error_report(args.checkpoint, args.fp32, args.data_dir, args.json))
        return 0
    int8_model, meta = load_int8(args.checkpoint)
    # quantize records the FP32 file it read (source_path); --fp32 overrides it.
    fp32_path = args.fp32 or meta.get("source_path")
    if args.fp32 is None and (fp32_path is None or not Path(fp32_path).is_file()):
        raise InputError(
            f"no FP32 checkpoint to compare with (the meta names {fp32_path!r}); give --fp32"
        )
    fp32, _ = load_fp32(fp32_path)
    if model_name(fp32) != "simplenet":
        raise InputError(
            f"{fp32_path} holds a {model_name(fp32)}: the per-layer diagnosis is implemented "
            "for simplenet only"
        )
    data = load_mnist(args.data_dir, splits=("test",), verbose=False)
    rows = layer_errors(fp32, int8_model, data.test.images)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "layers": layer_error_json(rows)}))
    else:
        print(f"{data.describe()}\nSQNR of every layer's output against FP32:")
        print(layer_error_table(rows))
    return 0


# The options of the INT8 quantization, with their defaults: --format refuses them.
INT8_OPTIONS = {
    "observer": "histogram",
    "per_tensor": False,
    "equalize": False,
    "pixel_input": False,
    "weight_bits": 8,
    "activation_bits": 8,
    "rounding": "nearest",
    "bias_correction": False,
    "weight_clipping": "minmax",
    "layer_bits": None,
    "seed": 0,
    "adaround_iterations": 400,
    "requantization": "fixed-point",
}
# The options that only AdaRound reads.
ADAROUND_OPTIONS = ("seed", "adaround_iterations")


def run_quantize_format(args: argparse.Namespace) -> int:
    """``quantize --format NAME``: ``ptqlib.formats.command.quantize_to_format``."""
    from ptqlib.formats.command import quantize_to_format

    given = [name for name, default in INT8_OPTIONS.items() if getattr(args, name) != default]
    if given:
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise InputError(f"--format {args.format}: {options} set the INT8 quantization; drop it")
    result = quantize_to_format(
        args.checkpoint, args.out, args.format, args.calib, args.model, args.data_dir
    )
    print(result.summary())
    return 0


def quantize_settings(args: argparse.Namespace) -> QuantizeSettings:
    """The parsed ``quantize`` options as one :class:`QuantizeSettings` (checked there)."""
    from ptqlib.app.quantize import QuantizeSettings
    from ptqlib.lowbit.weights import LowBitSettings, parse_layer_bits

    ignored = [
        f"--{name.replace('_', '-')} {getattr(args, name)}"
        for name in ADAROUND_OPTIONS
        if getattr(args, name) != INT8_OPTIONS[name]
    ]
    if ignored and args.rounding != "adaround":
        raise InputError(
            f"{', '.join(ignored)}: set AdaRound, which runs only with --rounding adaround "
            f"(not {args.rounding}); add that or drop them"
        )
    layer_bits = {}
    if args.layer_bits is not None:
        layer_bits = parse_layer_bits(args.layer_bits)  # names: checked against the model
    bits = LowBitSettings(
        weight_bits=args.weight_bits,
        activation_bits=args.activation_bits,
        rounding=args.rounding,
        clipping=args.weight_clipping,
        bias_correction=args.bias_correction,
        per_channel=not args.per_tensor,
        layer_bits=layer_bits,
        adaround_kwargs={"seed": args.seed, "iterations": args.adaround_iterations},
    )
    return QuantizeSettings(
        checkpoint=args.checkpoint,
        out=args.out,
        observer=args.observer,
        calib=args.calib,
        model=args.model,
        data_dir=args.data_dir,
        requantization=args.requantization.replace("-", "_"),
        bits=bits,
        equalize=args.equalize,
        pixel_input=args.pixel_input,
    )


def run_quantize(args: argparse.Namespace) -> int:
    from ptqlib.app import quantize

    if args.format is not None:
        return run_quantize_format(args)
    settings = quantize_settings(args)
    result = quantize.quantize_checkpoint(settings)
    meta = result.meta
    bits = ",".join(f"{name}={width}" for name, width in meta["weight_bits"].items())
    fixes = f"{meta['rounding']}, {meta['clipping']} clipping" + (
        ", bias correction" if meta["bias_correction"] else ""
    )
    print(
        f"{'equalized (CLE), ' if meta['equalized'] else ''}"
        f"calibrated on {meta['calibration_images']:,} images with the {meta['observer']} "
        f"observer; weights {bits} ({fixes}), activations {meta['activation_bits']} bits, "
        f"in {meta['seconds']:.2f} s; wrote {result.path} ({result.int8_bytes:,} bytes, "
        f"{result.size_ratio:.2f}x smaller than FP32)"
    )
    return 0


def run_find_culprit(args: argparse.Namespace) -> int:
    from ptqlib.checkpoints import load_fp32
    from ptqlib.data import calibration_images, load_mnist
    from ptqlib.debugging import debug_model, format_report

    model, _ = load_fp32(args.checkpoint)
    data = load_mnist(args.data_dir, verbose=False)
    images = calibration_images(data.train, args.calib)
    report = debug_model(model, images, data.test, observer=args.observer, sweeps=args.sweeps)
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, **report.to_dict()}))
    else:
        print(f"{data.describe()}\n{format_report(report)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ptqlib.app.model_files import check_out_path, load_model
    from ptqlib.deploy.onnx_export import OPSET, fp32_to_onnx, int8_to_onnx, save_onnx

    check_out_path(args.out, args.checkpoint, "the exported model")
    model, kind, meta = load_model(args.checkpoint)
    if kind == "formats":
        raise InputError(
            f"{args.checkpoint} holds a model in a number format, which export does not "
            "write; export its FP32 checkpoint or an INT8 one"
        )
    model_name = meta.get("model") if isinstance(meta, dict) else None
    target = getattr(args, "target", None)
    if target is None and (
        getattr(args, "part", None) or getattr(args, "rounding", "single") != "single"
    ):
        raise InputError("--part and --rounding describe firmware: give --target too")
    if target is not None:
        if getattr(args, "format", "onnx") != "c":
            raise InputError("--target writes C firmware: give --format c too")
        return export_as_firmware(model, args.out, target, args.part, args.rounding, model_name)
    if getattr(args, "format", "onnx") == "c":
        return export_as_c(model, args.out, model_name)
    onnx_model = int8_to_onnx(model) if kind == "int8" else fp32_to_onnx(model)
    path = save_onnx(onnx_model, args.out)
    print(
        f"wrote {path}: the {kind.upper()} model as ONNX (opset {OPSET}, "
        f"{path.stat().st_size:,} bytes); the ONNX checker passed"
    )
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    from ptqlib.app.pipeline import run_pipeline
    from ptqlib.app.report import results_markdown

    results = run_pipeline(
        args.data_dir, args.calib, args.observer, args.out, args.threads, model=args.model
    )
    print(results_markdown(results))
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'results.md'}")
    return 0


# The models each extra runtime of ``bench`` can run, and why only those.
# The runtimes that run only some models, and why (the C export takes every model).
RUNTIME_MODELS = {
    "onnxruntime": ("simplenet", "ptqlib's ONNX export writes Linear layers only"),
    "pt2e": ("simplenet", "torch 2.14.1's Inductor fails to compile PT2E's quantized convs"),
}


def check_runtimes(model: str, runtimes: list[str]) -> None:
    """Refuse, before any work (no data loaded, no model built or trained), a runtime
    ``bench`` cannot run ``model`` in (:data:`RUNTIME_MODELS`)."""
    for runtime in runtimes:
        supported, why = RUNTIME_MODELS.get(runtime, (model, ""))
        if model != supported:
            raise InputError(
                f"--runtime {runtime}: implemented for --model {supported} only, not "
                f"--model {model} ({why})"
            )


def run_bench(args: argparse.Namespace) -> int:
    from ptqlib.app.pipeline import build_models, latency_rows, latency_table
    from ptqlib.app.report import latency_markdown, machine_line
    from ptqlib.data import calibration_images, load_mnist
    from ptqlib.fast.profiling import gemm_speedup
    from ptqlib.hardware import machine_info

    check_runtimes(args.model, args.runtime)
    data = load_mnist(args.data_dir, verbose=not args.json)
    models, _, settings = build_models(
        data, args.calib, args.observer, progress=not args.json, model=args.model
    )
    if "onnxruntime" in args.runtime:
        from ptqlib.deploy.onnx_runtime import onnx_runtime_models

        teaching = models["int8_ptqlib_teaching"]
        models.update(onnx_runtime_models(models["fp32"], teaching, args.threads))
    if "pt2e" in args.runtime:
        from ptqlib.reference.pt2e import pt2e_compiled_model

        images = calibration_images(data.train, args.calib)
        models["int8_pt2e"] = pt2e_compiled_model(models["fp32"], images).model
    if "c" in args.runtime:
        import tempfile

        from ptqlib.deploy.c_latency import c_builds

        teaching = models["int8_ptqlib_teaching"]
        # The compiled libraries live in the compile cache: the C sources can go afterwards.
        # Each C row times the C call itself (bound to its buffers), not a torch wrapper.
        with tempfile.TemporaryDirectory(prefix="ptqlib-c-bench-") as directory:
            builds = c_builds(models["fp32"], teaching, directory, args.model)
        models.update({f"c_{name.replace(' ', '_')}": build for name, build in builds.items()})
    rows = latency_rows(latency_table(models, tuple(args.batch_sizes), args.threads))
    machine = machine_info(args.threads)
    # The bound of the fast path's speed-up over FP32: its GEMM against FP32's, at batch 1024.
    settings["int8_gemm_speedup_at_1024"] = round(gemm_speedup(1024, threads=args.threads), 2)
    if args.json:
        print(json.dumps({"machine": machine, "settings": settings, "latency": rows}))
        return 0
    print(machine_line(machine))
    print(
        f"ptqlib's fast path accumulates with the {settings['ptqlib_accumulator']}, "
        f"{settings['int8_gemm_speedup_at_1024']:.2f}x as fast as the FP32 GEMM at batch 1024 "
        "on fc1 here: the most the fast path can gain over FP32 at a large batch."
    )
    print("Latency per batch: median ms of 21 interleaved repeats (interquartile range) and")
    print("throughput relative to FP32 (above 1: faster than FP32):")
    print("\n".join(latency_markdown(rows)))
    return 0
