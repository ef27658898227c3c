"""Compile an exported C model and call it from Python (notebook 10).

:func:`compile_library` builds one source of an export with the system C compiler (``$CC``,
else ``cc``, ``gcc`` or ``clang``) into a shared library, kept in a private per-user cache
(``ptqlib.deploy.c_cache``) under the hash of the source digest, the compiler and the flags,
so a second build costs nothing. :class:`CModel` loads it with ``ctypes`` and passes the
data pointers of contiguous tensors straight to ``<prefix>_forward``: no copy.

Builds (``variant``) of one export, all with the flags of ``BUILD``:

- ``"portable"``: ``<prefix>.c``, the plain loops any compiler builds (which the compiler
  still vectorizes for this CPU under ``-march=native``);
- ``"avx2"``: ``<prefix>_avx2.c``, the kernels written for x86 AVX2 + FMA (models of Linear
  layers; a CPU without AVX2 and FMA cannot build it);
- ``"native"``: the fastest build this CPU can run: ``avx2`` where the export has it and the
  compiler targets AVX2 and FMA under ``-march=native``, else ``portable``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ptqlib.data import normalise
from ptqlib.deploy.c_cache import cache_directory, store_library, verified_library
from ptqlib.deploy.c_call import extension_call
from ptqlib.deploy.c_export import BUILD_FLAGS, verify_directory
from ptqlib.errors import InputError

VARIANTS = ("native", "portable", "avx2")
LIBRARY_FLAGS = ("-shared", "-fPIC")
COMPILE_TIMEOUT_SECONDS = 120


def find_compiler() -> str:
    """The C compiler to use: ``$CC`` if set, else the first of cc, gcc, clang on PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise InputError("no C compiler found (install gcc)")


@functools.lru_cache(maxsize=8)
def native_macros(compiler: str) -> frozenset[str]:
    """The macros the compiler predefines under ``-march=native`` (``__AVX2__``, ...)."""
    command = [compiler, "-march=native", "-dM", "-E", "-x", "c", os.devnull]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    return frozenset(line.split()[1] for line in lines if line.startswith("#define "))


def native_targets() -> dict[str, bool]:
    """What ``-march=native`` targets here: ``{"avx2": ..., "avx512_vnni": ...}``."""
    macros = native_macros(find_compiler())
    return {
        "avx2": {"__AVX2__", "__FMA__"} <= macros,
        "avx512_vnni": {"__AVX512VNNI__", "__AVX512BW__"} <= macros,
    }


def build_source(manifest: dict, variant: str) -> str:
    """The source file a build ``variant`` compiles (module docstring)."""
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    builds = manifest["builds"]
    if variant == "native":
        variant = "avx2" if "avx2" in builds and native_targets()["avx2"] else "portable"
    if variant not in builds:
        raise InputError(
            f"variant: {variant!r}; this export has the builds {', '.join(sorted(builds))}"
        )
    return builds[variant]


def compile_library(
    directory: str | os.PathLike, variant: str = "native", extra_flags: tuple[str, ...] = ()
) -> Path:
    """The shared library of one build ``variant`` of the export in ``directory`` (checked
    by its digest first), from the cache if built before. A compiler error is an InputError
    carrying the compiler's first lines."""
    directory = Path(directory)
    manifest = verify_directory(directory)
    source = directory / build_source(manifest, variant)
    flags = (*BUILD_FLAGS, *LIBRARY_FLAGS, *extra_flags)
    return cached_build(source, flags, manifest["digest"], directory)


def compile_text(text: str, name: str, flags: tuple[str, ...] = ()) -> Path:
    """A shared library of the C ``text`` (``-std=c99`` and ``flags``), from the cache."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    with tempfile.TemporaryDirectory(prefix="ptqlib-c-") as scratch:
        source = Path(scratch) / f"{name}.c"
        source.write_text(text)
        return cached_build(source, ("-std=c99", *LIBRARY_FLAGS, *flags), digest, Path(scratch))


def cached_build(source: Path, flags: tuple[str, ...], digest: str, include: Path) -> Path:
    """``source`` (whose content has the SHA-256 ``digest``) compiled with ``flags``: the
    library in the private cache, built there (under a unique name, then renamed: no process
    loads half a file) unless a verified one is there already."""
    compiler = find_compiler()
    recipe = {"compiler": compiler, "flags": list(flags), "source": source.name}
    key = hashlib.sha256("\0".join([compiler, *flags, source.name, digest]).encode())
    cache = cache_directory()
    library = cache / f"{source.stem}-{key.hexdigest()[:24]}.so"
    if verified_library(library, digest):
        return library
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        partial = Path(scratch) / library.name
        command = [compiler, *flags, "-I", str(include), "-o", str(partial), str(source)]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_SECONDS
        )
        if result.returncode != 0:
            first_lines = " | ".join(result.stderr.strip().splitlines()[:3])
            raise InputError(f"{source}: the C compiler failed: {first_lines}")
        store_library(partial, library, digest, recipe)
    return library


class CModel(nn.Module):
    """An exported C model as an ``nn.Module``, so ``ptqlib.evaluation`` measures it like
    the others. INT8: uint8 pixels in (``takes_pixels``), the logits' integers out
    (:meth:`quantized_logits`; ``forward`` dequantizes them, ``S_y (q - Z_y)``). FP32:
    normalised float images in, float logits out."""

    def __init__(
        self, directory: str | os.PathLike, variant: str = "native", use_extension: bool = True
    ) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.manifest = verify_directory(self.directory)
        self.variant = variant
        self.source = build_source(self.manifest, variant)
        self.kind = self.manifest["kind"]
        self.library_path = compile_library(self.directory, variant)
        self._library = ctypes.CDLL(str(self.library_path))
        self._forward = getattr(self._library, f"{self.manifest['prefix']}_forward")
        self._forward.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
        self._forward.restype = None
        self.function_address = ctypes.cast(self._forward, ctypes.c_void_p).value
        self._call = extension_call() if use_extension else None
        self.inputs, self.outputs = self.manifest["inputs"], self.manifest["outputs"]
        self.input_dtype = torch.uint8 if self.kind == "int8" else torch.float32

    @property
    def takes_pixels(self) -> bool:
        return self.kind == "int8"

    def checked(self, batch: torch.Tensor, out: torch.Tensor | None) -> tuple:
        """``(batch, out, size)`` ready for the C: ``batch`` of the input dtype with
        ``inputs`` values per image (made contiguous), ``out`` given (``[N, outputs]``,
        contiguous: the C writes into its memory) or allocated."""
        size = batch.shape[0] if batch.dim() else 0
        if batch.dtype != self.input_dtype or batch.numel() != size * self.inputs:
            raise InputError(
                f"batch: expected {self.input_dtype} images of {self.inputs} values, got "
                f"{batch.dtype} {tuple(batch.shape)}"
            )
        if out is None:
            out = torch.empty((size, self.outputs), dtype=self.input_dtype)
        elif (
            out.shape != (size, self.outputs)
            or out.dtype != self.input_dtype
            or not out.is_contiguous()
        ):
            raise InputError(
                f"out: expected a contiguous {self.input_dtype} tensor {(size, self.outputs)}, "
                f"got {out.dtype} {tuple(out.shape)}"
                + ("" if out.is_contiguous() else " (not contiguous)")
            )
        return batch.contiguous(), out, size

    def run(self, batch: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The C forward on ``batch`` (``[N, ...]`` with ``inputs`` values per image, of the
        input dtype): uint8 logits in the C's domain (INT8) or float logits (FP32), written
        into ``out`` if given (``[N, outputs]``, contiguous; saves an allocation per call)."""
        batch, out, size = self.checked(batch, out)
        if self._call is not None:
            self._call(self.function_address, batch.data_ptr(), out.data_ptr(), size)
        else:
            self._forward(batch.data_ptr(), out.data_ptr(), size)
        return out

    def bind(self, batch: torch.Tensor, out: torch.Tensor | None = None) -> Callable[[], None]:
        """A call of the C forward on these two tensors, checked now and never again: each
        call runs the C on ``batch``'s current values and writes into ``out`` (the lightest
        call from Python; ``ptqlib.deploy.c_call``). ``batch`` must be contiguous: the call
        reads its memory, so fill it in place (``batch.copy_(...)``) between calls."""
        if not batch.is_contiguous():
            raise InputError("batch: expected a contiguous tensor (the call reads its memory)")
        batch, out, size = self.checked(batch, out)
        keep = (batch, out)  # held by the call: their memory outlives it
        if self._call is not None:
            return functools.partial(
                self._call, self.function_address, batch.data_ptr(), out.data_ptr(), size, keep
            )
        forward, pointers = self._forward, (batch.data_ptr(), out.data_ptr(), size)
        return lambda keep=keep: forward(*pointers)

    def inputs_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """What this model takes for the digits ``pixels`` (uint8 ``[N, 28, 28]``): the
        pixels (INT8) or the normalised images (FP32), one contiguous row per image."""
        images = pixels if self.kind == "int8" else normalise(pixels)
        return images.reshape(len(pixels), -1).contiguous()

    def latency_call(self, pixels: torch.Tensor) -> Callable[[], None]:
        """The C call to time on ``pixels`` (``ptqlib.evaluation.latency_call``): bound to
        its input and an output allocated once, as an application calls it."""
        return self.bind(self.inputs_of(pixels))

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
        return f"{self.manifest['prefix']}, {self.variant} build ({self.source})"


def load_c_model(directory: str | os.PathLike, variant: str = "native") -> CModel:
    """Check, compile (or take from the cache) and load an exported C model directory."""
    if not Path(directory).is_dir():
        raise InputError(f"checkpoint: {directory} is not a directory")
    return CModel(directory, variant)


def compiler_version() -> str:
    """The compiler's first ``--version`` line, e.g. ``gcc (Debian 12.2.0-14) 12.2.0``."""
    result = subprocess.run([find_compiler(), "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.stdout else "unknown compiler"
