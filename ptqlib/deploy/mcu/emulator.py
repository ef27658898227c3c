"""Build exported firmware with ``arm-none-eabi-gcc`` and run it in QEMU (notebook 11).

:func:`build_firmware` compiles and links one kernel of an export (its ``BUILD`` line) into
a cache directory keyed by the SHA-256 of the files and the command, so a second build
costs nothing. A program that does not fit the part is refused by the linker:
:class:`LinkError` carries the linker's own lines (``region `FLASH' overflowed by ...``).

:func:`run_firmware` writes the images to ``inputs.bin`` in a fresh directory, runs QEMU
there (semihosting opens files relative to QEMU's working directory) and reads back
``outputs.bin`` and ``report.bin``. QEMU emulates the instructions, not the timing: with
``-icount shift=0`` its virtual clock advances one nanosecond per instruction, so the
SysTick counts instructions (:mod:`ptqlib.deploy.mcu.work` turns them into estimates).
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptqlib.deploy.c_cache import cache_directory, store_library, verified_library
from ptqlib.deploy.mcu import tools
from ptqlib.deploy.mcu.firmware import (
    INPUTS_FILE,
    OUTPUTS_FILE,
    REPORT_FIELDS,
    REPORT_FILE,
    Kernel,
    compile_command,
    qemu_command,
    verify_firmware,
)
from ptqlib.deploy.mcu.targets import PARTS, TARGETS
from ptqlib.errors import InputError

BUILD_TIMEOUT_SECONDS = 300
# QEMU runs ~100-300 M instructions per second here; a SimpleNet inference is < 1 M.
RUN_TIMEOUT_SECONDS = 600


class LinkError(InputError):
    """The firmware does not link (it does not fit the part); ``lines`` are the linker's."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


@dataclass(frozen=True)
class FirmwareBuild:
    """A linked firmware: the ELF, its map file, and what it was built from."""

    directory: Path
    kernel: str
    elf: Path
    map_file: Path
    manifest: dict


def linker_messages(stderr: str, elf: Path) -> list[str]:
    """The linker's lines of a failed link (after its ``ld: ``), with the output file's
    path (a cache entry) written ``firmware.elf``."""
    lines = [line.split("ld: ", 1)[1] for line in stderr.splitlines() if "ld: " in line]
    return [line.replace(str(elf), "firmware.elf") for line in lines]


def build_firmware(directory: str | os.PathLike, kernel: str = "plain") -> FirmwareBuild:
    """Compile and link ``kernel`` ("plain" or "dsp") of the firmware in ``directory``
    (checked against its manifest), or take it from the cache."""
    tools.require_tools(tools.COMPILER)
    directory = Path(directory)
    manifest = verify_firmware(directory)
    if kernel not in manifest["kernels"]:
        raise InputError(
            f"kernel: expected one of {', '.join(manifest['kernels'])}, got {kernel!r}"
        )
    entry = manifest["kernels"][kernel]
    chosen = Kernel(kernel, tuple(entry["sources"]), entry["forward"], entry["description"])
    target, part = TARGETS[manifest["target"]], PARTS[manifest["part"]]
    recipe = compile_command(target, part, manifest["prefix"], chosen, "x.elf", "x.map")
    # The key covers the files (their digest) and the command: two firmware never share a path.
    key = hashlib.sha256("\0".join([*recipe, manifest["digest"]]).encode()).hexdigest()[:24]
    # The private per-user cache of c_cache: a firmware's semihosting can write host files,
    # so a cached ELF is run only if its bytes hash to the record written when it was built.
    elf = cache_directory() / f"{manifest['prefix']}-{kernel}-{key}.elf"
    map_file = elf.with_suffix(".map")
    if verified_library(elf, manifest["digest"]) and map_file.is_file():
        return FirmwareBuild(directory, kernel, elf, map_file, manifest)
    with tempfile.TemporaryDirectory(dir=cache_directory()) as scratch:
        built, built_map = Path(scratch) / elf.name, Path(scratch) / map_file.name
        command = compile_command(
            target, part, manifest["prefix"], chosen, str(built), str(built_map)
        )
        try:
            result = subprocess.run(
                command, cwd=directory, capture_output=True, text=True,
                timeout=BUILD_TIMEOUT_SECONDS,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise InputError(
                f"{directory}: arm-none-eabi-gcc took more than {BUILD_TIMEOUT_SECONDS} s"
            ) from None
        if result.returncode != 0:
            lines = linker_messages(result.stderr, built)
            overflows = [line for line in lines if "overflowed by" in line]
            if overflows:
                raise LinkError(f"{part.label}: the firmware does not fit: {overflows[0]}", lines)
            first = " | ".join(result.stderr.strip().splitlines()[:3])
            raise InputError(f"{directory}: arm-none-eabi-gcc failed: {first}")
        os.replace(built_map, map_file)
        store_library(built, elf, manifest["digest"], {"command": command})
    return FirmwareBuild(directory, kernel, elf, map_file, manifest)


@dataclass(frozen=True)
class FirmwareRun:
    """What one run in QEMU returned: an output row per image, the report, the wall time."""

    outputs: torch.Tensor
    report: dict[str, int]
    seconds: float

    @property
    def ticks(self) -> int:
        return self.report["ticks_low"] + (self.report["ticks_high"] << 32)


def input_bytes(images: torch.Tensor, kind: str, inputs: int) -> bytes:
    """The images as the firmware reads them: uint8 pixels (INT8) or float32 normalised
    values (FP32), ``inputs`` per image, little-endian, image after image."""
    expected = torch.uint8 if kind == "int8" else torch.float32
    if images.dtype != expected or images.numel() != len(images) * inputs:
        raise InputError(
            f"images: expected {expected} images of {inputs} values, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    array = images.contiguous().numpy()
    return (array.astype("<f4") if kind == "fp32" else array).tobytes()


def run_firmware(build: FirmwareBuild, images: torch.Tensor) -> FirmwareRun:
    """Run ``build`` in QEMU on ``images`` (``[N, ...]``); the outputs in the firmware's
    element type (uint8 logits in the C's domain, or float32)."""
    tools.require_tools(tools.EMULATOR)
    manifest = build.manifest
    kind, outputs = manifest["kind"], manifest["outputs"]
    data = input_bytes(images, kind, manifest["inputs"])
    with tempfile.TemporaryDirectory(prefix="ptqlib-qemu-") as scratch:
        scratch = Path(scratch)
        (scratch / INPUTS_FILE).write_bytes(data)
        command = qemu_command(TARGETS[manifest["target"]], str(build.elf))
        started = time.perf_counter()
        try:
            result = subprocess.run(
                command, cwd=scratch, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
            )
        except subprocess.TimeoutExpired:
            raise InputError(
                f"the {build.kernel} firmware did not finish {len(images):,} images in "
                f"{RUN_TIMEOUT_SECONDS} s of QEMU: it hangs, or runs far more instructions "
                "than expected"
            ) from None
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            said = " | ".join((result.stdout + result.stderr).strip().splitlines()[:2])
            raise InputError(
                f"the {build.kernel} firmware stopped with status {result.returncode} in QEMU"
                + (f": {said}" if said else "")
            )
        dtype = np.uint8 if kind == "int8" else np.dtype("<f4")
        values = np.fromfile(scratch / OUTPUTS_FILE, dtype=dtype)
        words = struct.unpack(f"<{len(REPORT_FIELDS)}I", (scratch / REPORT_FILE).read_bytes())
    report = dict(zip(REPORT_FIELDS, words, strict=True))
    if report["stack_bytes_used"] >= report["stack_bytes"]:
        raise InputError(
            f"the {build.kernel} firmware used all {report['stack_bytes']:,} bytes of its stack: "
            "it may have overflowed"
        )
    if report["images"] != len(images) or values.size != len(images) * outputs:
        raise InputError(
            f"the firmware answered {report['images']} of {len(images)} images "
            f"({values.size} output values)"
        )
    return FirmwareRun(torch.from_numpy(values.reshape(len(images), outputs).copy()), report,
                       seconds)  # fmt: skip
