"""Compile an exported C model and call it from Python (notebook 10).

:func:`compile_library` builds ``<prefix>.c`` with the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``) into a shared library, cached in the temp directory by the
hash of the source and the flags, so a second build costs nothing. :class:`CModel` loads it
with ``ctypes`` and passes the data pointers of contiguous tensors straight to
``<prefix>_forward``: no copy, no framework in between.

Builds of the same INT8 file: ``"native"`` (``-march=native``: the AVX-512 VNNI
intrinsics where the CPU has them), ``"portable"`` (the same flags with ``__AVX512VNNI__``
undefined: the plain loops, which gcc still vectorizes for this CPU) and ``"avx2"``
(``-march=x86-64-v3``: the code an AVX2-only CPU gets; x86 only).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

from ptqlib.deploy.c_export import BUILD_FLAGS, verify_directory
from ptqlib.errors import InputError

VARIANTS = {
    "native": ("-mprefer-vector-width=512",),
    "portable": ("-mprefer-vector-width=512", "-U__AVX512VNNI__"),
    # What an AVX2-only CPU compiles (x86-64-v3 replaces -march=native): the portable loops.
    # It runs on any newer x86 CPU too, so its integers can be checked here.
    "avx2": ("-march=x86-64-v3",),
}
# The x86-only flags: elsewhere (ARM...) a build keeps -march=native and the portable loops.
X86_ONLY = ("-mprefer-vector-width=512", "-march=x86-64-v3")
LIBRARY_FLAGS = ("-shared", "-fPIC")
COMPILE_TIMEOUT_SECONDS = 120


def variant_flags(variant: str) -> list[str]:
    """The compiler flags of a build ``variant`` on this machine."""
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(VARIANTS[variant])
    if variant == "avx2":
        raise InputError(f"variant: 'avx2' builds for x86, this is {platform.machine()}")
    return [flag for flag in VARIANTS[variant] if flag not in X86_ONLY]


def find_compiler() -> str:
    """The C compiler to use: ``$CC`` if set, else the first of cc, gcc, clang on PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise InputError("no C compiler found (install gcc)")


def cache_directory() -> Path:
    directory = Path(tempfile.gettempdir()) / "ptqlib-c-cache"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def compile_library(directory: str | os.PathLike, variant: str = "native") -> Path:
    """The shared library of the exported C in ``directory`` (checked by its digest),
    compiled with the flags of ``variant`` (one of VARIANTS), from the cache if built
    before. A compiler error is an InputError carrying the compiler's first lines."""
    flags = [*BUILD_FLAGS, *variant_flags(variant), *LIBRARY_FLAGS]
    directory = Path(directory)
    manifest = verify_directory(directory)
    compiler = find_compiler()
    source = directory / f"{manifest['prefix']}.c"
    recipe = "\0".join([compiler, *flags, manifest["digest"]])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:24]
    library = cache_directory() / f"{manifest['prefix']}-{variant}-{key}.so"
    if library.is_file():
        return library
    # Build under a unique name, then rename: another process never loads half a file.
    with tempfile.TemporaryDirectory(dir=cache_directory()) as scratch:
        partial = Path(scratch) / library.name
        command = [compiler, *flags, "-I", str(directory), "-o", str(partial), str(source)]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_SECONDS
        )
        if result.returncode != 0:
            first_lines = " | ".join(result.stderr.strip().splitlines()[:3])
            raise InputError(f"{source}: the C compiler failed: {first_lines}")
        os.replace(partial, library)
    return library


class CModel(nn.Module):
    """An exported C model as an ``nn.Module``, so ``ptqlib.evaluation`` measures it like
    the others. INT8: uint8 pixels in (``takes_pixels``), the logits' integers out
    (:meth:`quantized_logits`; ``forward`` dequantizes them, ``S_y (q - Z_y)``). FP32:
    normalised float images in, float logits out."""

    def __init__(self, directory: str | os.PathLike, variant: str = "native") -> None:
        super().__init__()
        self.directory = Path(directory)
        self.manifest = verify_directory(self.directory)
        self.variant = variant
        self.kind = self.manifest["kind"]
        self.library_path = compile_library(self.directory, variant)
        self._library = ctypes.CDLL(str(self.library_path))
        self._forward = getattr(self._library, f"{self.manifest['prefix']}_forward")
        self._forward.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
        self._forward.restype = None
        self.inputs, self.outputs = self.manifest["inputs"], self.manifest["outputs"]
        self.input_dtype = torch.uint8 if self.kind == "int8" else torch.float32

    @property
    def takes_pixels(self) -> bool:
        return self.kind == "int8"

    def run(self, batch: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The C forward on ``batch`` (``[N, ...]`` with ``inputs`` values per image, of the
        input dtype): uint8 logits in the C's domain (INT8) or float logits (FP32), written
        into ``out`` if given (``[N, outputs]``, contiguous; saves an allocation per call)."""
        size = batch.shape[0]
        if batch.dtype != self.input_dtype or batch.numel() != size * self.inputs:
            raise InputError(
                f"batch: expected {self.input_dtype} images of {self.inputs} values, got "
                f"{batch.dtype} {tuple(batch.shape)}"
            )
        if out is None:
            out = torch.empty((size, self.outputs), dtype=self.input_dtype)
        elif out.shape != (size, self.outputs) or out.dtype != self.input_dtype:
            raise InputError(
                f"out: expected a contiguous {self.input_dtype} tensor {(size, self.outputs)}, "
                f"got {out.dtype} {tuple(out.shape)}"
            )
        out = out.contiguous()  # not a copy when it already is (then C writes into it)
        batch = batch.contiguous()
        self._forward(batch.data_ptr(), out.data_ptr(), size)
        return out

    def quantized_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """INT8 only: the logits' integers in their own dtype, as
        ``Int8Model.quantized_logits`` returns them (the C keeps int8 as q + 128)."""
        if self.kind != "int8":
            raise InputError("quantized_logits: an FP32 C model has no integer logits")
        logits = self.run(pixels)
        if self.manifest["output_dtype"] == "int8":
            return (logits.to(torch.int16) - 128).to(torch.int8)
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.run(images)
        if self.kind == "fp32":
            return logits
        zero_point = self.manifest["output_zero_point"]  # in the C's uint8 domain
        return (logits.float() - zero_point) * self.manifest["output_scale"]

    def extra_repr(self) -> str:
        return f"{self.manifest['prefix']}, {self.variant} build"


def load_c_model(directory: str | os.PathLike, variant: str = "native") -> CModel:
    """Check, compile (or take from the cache) and load an exported C model directory."""
    if not Path(directory).is_dir():
        raise InputError(f"checkpoint: {directory} is not a directory")
    return CModel(directory, variant)


def native_build_has_vnni() -> bool:
    """Whether ``-march=native`` defines ``__AVX512VNNI__`` here: then the native build of an
    INT8 export compiles its VNNI path (else the portable loops, e.g. on AVX2-only CPUs)."""
    command = [find_compiler(), "-march=native", "-dM", "-E", "-x", "c", os.devnull]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    return "__AVX512VNNI__" in result.stdout and "__AVX512BW__" in result.stdout


def compiler_version() -> str:
    """The compiler's first ``--version`` line, e.g. ``gcc (Debian 12.2.0-14) 12.2.0``."""
    result = subprocess.run([find_compiler(), "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.stdout else "unknown compiler"
