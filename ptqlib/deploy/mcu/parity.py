"""Every output of the firmware in QEMU against ptqlib (notebook 11; ``evaluate --target``).

The firmware directory keeps the model it was exported from (``reference.pt``). For each
kernel, :func:`check_firmware` builds it, streams the test split and a few stress images
(all black, all white, noise) through QEMU in one run, and compares every output:

- INT8: every logit integer against ``Int8Model.quantized_logits`` (against the
  double-rounding model of ``ptqlib.deploy.mcu.cmsis_arithmetic`` for a DSP kernel exported
  with ``rounding="double"``), so "identical" means bit for bit;
- FP32: every float against the same C file compiled for this computer (``c_runtime``'s
  portable build): the Cortex-M4's FPU and the host's both round each float32 operation
  the IEEE way, both fuse ``a + b * c`` (``-ffp-contract=fast``), and the C fixes the order
  of the sums, so the floats are identical too.

A difference is reported in one line: which image, which output, both values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ptqlib.data import MNISTSplit, normalise
from ptqlib.deploy.c_runtime import load_c_model
from ptqlib.deploy.mcu.cmsis_arithmetic import with_double_rounding
from ptqlib.deploy.mcu.emulator import FirmwareBuild, LinkError, build_firmware, run_firmware
from ptqlib.deploy.mcu.firmware import REFERENCE, verify_firmware
from ptqlib.deploy.mcu.memory import MemoryUse, memory_use, section_sizes
from ptqlib.deploy.mcu.work import instructions_per_inference
from ptqlib.int8_checkpoint import load_int8

STRESS_SEED = 0


def stress_pixels(count: int = 64, seed: int = STRESS_SEED) -> torch.Tensor:
    """Images no digit looks like: all 0, all 255, then uniform noise; uint8 ``[count+2, 784]``."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (count, 784), dtype=torch.uint8, generator=generator)
    black = torch.zeros(1, 784, dtype=torch.uint8)
    return torch.cat([black, black + 255, noise])


@dataclass(frozen=True)
class Comparison:
    """How the firmware's outputs compare with the reference's on one set of images."""

    identical: int
    total: int
    first_difference: str | None  # "image 17, output 3: firmware 120, ptqlib 121"

    @property
    def all_identical(self) -> bool:
        return self.identical == self.total


def compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> Comparison:
    same = got == expected
    first = None
    if not bool(same.all()):
        image, output = (int(index) for index in torch.nonzero(~same)[0])
        first = (
            f"{what} image {image}, output {output}: firmware {got[image, output].item()}, "
            f"reference {expected[image, output].item()}"
        )
    return Comparison(int(same.sum()), same.numel(), first)


@dataclass(frozen=True)
class KernelCheck:
    """One kernel of a firmware, run on the test split and the stress images."""

    kernel: str
    description: str
    test: Comparison
    stress: Comparison
    accuracy: float
    instructions: float  # per inference, counted in QEMU
    stack_bytes_used: int
    memory: MemoryUse
    build: FirmwareBuild
    report: dict[str, int]  # what the firmware measured (ptqlib.deploy.mcu.firmware)
    seconds: float


def firmware_inputs(kind: str, pixels: torch.Tensor) -> torch.Tensor:
    """What the firmware reads per image: the uint8 pixels (INT8) or normalised floats."""
    flat = pixels.reshape(len(pixels), -1)
    if kind == "int8":
        return flat.contiguous()
    return normalise(pixels.reshape(-1, 28, 28)).reshape(len(pixels), -1).contiguous()


def reference_outputs(directory: Path, manifest: dict, kernel: str, pixels: torch.Tensor):
    """The outputs the firmware must reproduce, in its own domain (INT8: the C's uint8)."""
    if manifest["kind"] == "fp32":  # the same C, compiled for this computer
        return load_c_model(directory, "portable").run(firmware_inputs("fp32", pixels))
    model, _ = load_int8(directory / REFERENCE)
    if kernel == "dsp" and manifest["rounding"] == "double":
        model = with_double_rounding(model)
    images = pixels if model.takes_pixels else normalise(pixels.reshape(-1, 28, 28))
    logits = model.quantized_logits(images)
    return (logits.to(torch.int16) + 128).to(torch.uint8) if logits.dtype == torch.int8 else logits


def check_kernel(
    directory: Path, manifest: dict, kernel: str, test: MNISTSplit, noise: int = 64
) -> KernelCheck:
    """Build ``kernel``, run the test split and the stress images (all black, all white and
    ``noise`` of noise), compare (see module)."""
    build = build_firmware(directory, kernel)
    pixels = test.pixels().reshape(len(test), -1)
    stress = stress_pixels(noise)
    run = run_firmware(build, firmware_inputs(manifest["kind"], torch.cat([pixels, stress])))
    got_test, got_stress = run.outputs[: len(pixels)], run.outputs[len(pixels) :]
    expected = reference_outputs(directory, manifest, kernel, torch.cat([pixels, stress]))
    description = manifest["kernels"][kernel]["description"]
    return KernelCheck(
        kernel=kernel,
        description=description,
        test=compare(got_test, expected[: len(pixels)], "test"),
        stress=compare(got_stress, expected[len(pixels) :], "stress"),
        accuracy=float((got_test.argmax(dim=1) == test.labels).float().mean()),
        instructions=instructions_per_inference(run.report),
        stack_bytes_used=run.report["stack_bytes_used"],
        memory=memory_use(section_sizes(build.elf)),
        build=build,
        report=run.report,
        seconds=run.seconds,
    )


def check_firmware(
    directory: str | os.PathLike,
    test: MNISTSplit,
    kernels: list[str] | None = None,
    noise: int = 64,
) -> dict[str, KernelCheck | LinkError]:
    """Every kernel of the firmware in ``directory`` checked on ``test`` and the stress
    images (see module; ``noise`` images of noise); a kernel that does not fit its part
    gives the linker's error instead."""
    directory = Path(directory)
    manifest = verify_firmware(directory)
    results: dict[str, KernelCheck | LinkError] = {}
    for kernel in kernels or list(manifest["kernels"]):
        try:
            results[kernel] = check_kernel(directory, manifest, kernel, test, noise)
        except LinkError as error:
            results[kernel] = error
    return results


def check_line(check: KernelCheck) -> str:
    """One line per kernel: identical outputs on the test split and stress, accuracy, or
    where they first differ."""
    verdict = "identical" if check.test.all_identical and check.stress.all_identical else "DIFFER"
    line = (
        f"{check.kernel} ({check.description}): {check.test.identical:,} of "
        f"{check.test.total:,} outputs identical on the test split, {check.stress.identical:,} "
        f"of {check.stress.total:,} on stress images ({verdict}); accuracy "
        f"{check.accuracy:.2%}; {check.instructions:,.0f} instructions per inference"
    )
    difference = check.test.first_difference or check.stress.first_difference
    return line + (f"; first difference: {difference}" if difference else "")
