"""Benchmark: the low-bit methods on SimpleNet: accuracy, packed size and time to quantize.

For each weight width (W4, W3, W2; activations 8 bits) and each method (nearest rounding,
MSE clipping, bias correction, GPTQ, AdaRound, each with the default settings) the cached
FP32 baseline is quantized from 1,000 class-balanced calibration images, converted to the
integer engine, saved (packed) and evaluated on the test split. Times are the weight
quantization alone (the part the methods differ in), one run each, on the thread count
given: a table from one run, with each method's time as a ratio to nearest rounding.
On a machine shared with other work the times are noisy; the accuracies are not.

Run: python benchmarks/bench_low_bit.py [--threads N] [--bits 4 3 2] [--observer NAME] [--markdown]
     python benchmarks/bench_low_bit.py --smoke   (W2 only, 100 images, 10 AdaRound steps)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ptqlib.data import calibration_images, load_mnist
from ptqlib.evaluation import predict
from ptqlib.hardware import cpu_name
from ptqlib.int8_checkpoint import save_int8
from ptqlib.lowbit.weights import LowBitSettings, quantize_low_bit
from ptqlib.training import load_or_train_baseline

METHODS = {
    "nearest": {},
    "MSE clipping": {"clipping": "mse"},
    "bias correction": {"bias_correction": True},
    "GPTQ": {"rounding": "gptq"},
    "GPTQ + bias correction": {"rounding": "gptq", "bias_correction": True},
    "AdaRound": {"rounding": "adaround"},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2], help="weight bits")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument(
        "--observer", default="histogram", help="activation observer (default histogram)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick run that checks the script works: W2, 100 images, 10 AdaRound steps, "
        "no download",
    )
    args = parser.parse_args(argv)
    adaround = {}
    if args.smoke:
        args.bits, adaround = [2], {"iterations": 10}
    torch.set_num_threads(args.threads)
    data = load_mnist(verbose=False, download=not args.smoke)
    model, _ = load_or_train_baseline(data, progress=False)
    images = calibration_images(data.train, 100 if args.smoke else 1000)
    fp32_accuracy = float((predict(model, data.test) == data.test.labels).float().mean())
    print(f"{data.describe()}")
    print(f"CPU: {cpu_name()}, {args.threads} threads, torch {torch.__version__}")
    print(f"FP32: {fp32_accuracy:.2%}; activations 8 bits, {args.observer} observer")
    separator = " | " if args.markdown else "  "
    header = ["bits", "method", "accuracy", "vs FP32 (pp)", "size (bytes)", "seconds", "vs nearest"]
    print(
        ("| " if args.markdown else "") + separator.join(header) + (" |" if args.markdown else "")
    )
    if args.markdown:
        print("|---" * len(header) + "|")
    with tempfile.TemporaryDirectory() as folder:
        for bits in args.bits:
            nearest_seconds = None
            for method, options in METHODS.items():
                settings = LowBitSettings(weight_bits=bits, adaround_kwargs=adaround, **options)
                quantized = quantize_low_bit(model, images, settings, observer=args.observer)
                predictions = predict(quantized.int8_model, data.test)
                accuracy = float((predictions == data.test.labels).float().mean())
                size = save_int8(quantized.int8_model, Path(folder) / "q.pt").stat().st_size
                seconds = quantized.weights.seconds
                nearest_seconds = nearest_seconds or seconds
                cells = [
                    f"W{bits}A8",
                    method,
                    f"{accuracy:.2%}",
                    f"{100 * (accuracy - fp32_accuracy):+.1f}",
                    f"{size:,}",
                    f"{seconds:.2f}",
                    f"{seconds / nearest_seconds:.0f}x",
                ]
                line = separator.join(cells)
                print(f"| {line} |" if args.markdown else line, flush=True)


if __name__ == "__main__":
    main()
