"""Running the exported model in ONNX Runtime, and checking it against ptqlib integer by integer.

:class:`OnnxModel` wraps an ``onnxruntime.InferenceSession`` as an ``nn.Module`` (images in,
float logits out), so ``ptqlib.evaluation`` measures it like any other model. ORT's graph
optimizer turns each ``DQ -> Gemm -> Q`` group of the exported graph into one integer
kernel (QGemm); :func:`optimized_op_types` shows which operators really run.

**Threads.** ORT's worker threads keep spinning for a while after each call, waiting for
the next one. On a machine with few cores they then steal the CPU from everything else in
the process (torch included: timings measured side by side become 2-7x too slow). The
sessions here stop spinning when a call returns (``session_options``).

:func:`layer_parity` compares every quantized activation of ORT (the file exported with
``expose_integers=True``) with ptqlib's: the fraction identical, the fraction within one
step (1 LSB), the largest difference. :func:`with_requantization` turns an INT8 model (e.g.
a loaded checkpoint) into the same model computing with ORT's arithmetic, for that comparison.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from google.protobuf.message import DecodeError
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from torch import nn

from ptqlib.deploy.onnx_export import (
    DIGEST_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    PRODUCER,
    fp32_to_onnx,
    int8_to_onnx,
    onnx_digest,
)
from ptqlib.errors import InputError
from ptqlib.int8_layers import Int8Conv2d, Int8Linear
from ptqlib.int8_model import Int8Model
from ptqlib.integer_arithmetic import requantization_mode

# What ONNX Runtime raises for a graph it cannot load or run (none derive from ValueError).
ORT_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.RuntimeException,
)


def session_options(threads: int = 2) -> onnxruntime.SessionOptions:
    """``threads`` intra-op threads, one inter-op thread, and no spinning after a call."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InputError(f"threads: expected a positive whole number, got {threads!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Without these, idle ORT threads spin on the cores and slow torch down (module docstring).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = 3  # errors only: no notes about hardware-specific graphs
    return options


class OnnxModel(nn.Module):
    """An ONNX Runtime session as a module: float images ``[N, 1, 28, 28]`` to float logits.

    ``kind`` is ``"int8"`` or ``"fp32"`` (from the file's metadata); ``size_bytes`` the size
    of the serialized model.
    """

    def __init__(self, onnx_model: onnx.ModelProto, threads: int = 2) -> None:
        super().__init__()
        serialized = onnx_model.SerializeToString()
        self.size_bytes = len(serialized)
        self.kind = metadata(onnx_model).get("ptqlib.kind", "unknown")
        # ptqlib.evaluation feeds such a model the pixels of the digits, as the Int8Model.
        self.takes_pixels = metadata(onnx_model).get("ptqlib.input") == "pixels"
        self.output_names = [output.name for output in onnx_model.graph.output]
        self.session = onnxruntime.InferenceSession(
            serialized, session_options(threads), providers=["CPUExecutionProvider"]
        )

    def run(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Every graph output by name (the logits, and the integers if exposed)."""
        feed = {INPUT_NAME: images.detach().float().contiguous().numpy()}
        return dict(zip(self.output_names, self.session.run(None, feed), strict=True))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feed = {INPUT_NAME: images.detach().float().contiguous().numpy()}
        (logits,) = self.session.run([OUTPUT_NAME], feed)
        return torch.from_numpy(logits)

    def extra_repr(self) -> str:
        return f"{self.kind} ONNX model, {self.size_bytes:,} bytes, ORT {onnxruntime.__version__}"


def metadata(onnx_model: onnx.ModelProto) -> dict[str, str]:
    """The ``metadata_props`` of a model as a dict (ptqlib writes ``ptqlib.kind`` there)."""
    return {entry.key: entry.value for entry in onnx_model.metadata_props}


# The metadata of exports written before ptqlib stamped them with a digest.
UNCHECKED_METADATA_KEYS = {"ptqlib.kind", "ptqlib.layers", "ptqlib.input"}


def check_onnx_digest(onnx_model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Refuse a ptqlib export whose ``ptqlib.sha256`` does not match its contents (InputError:
    corrupted). An export from before digests (only the old metadata keys) loads with a
    one-line note on stderr; one with other keys but no digest lost it to damage."""
    found = metadata(onnx_model)
    if DIGEST_KEY not in found and set(found) <= UNCHECKED_METADATA_KEYS:
        print(
            f"note: {path} was exported before ptqlib stamped ONNX files with a SHA-256 digest, "
            "so it loads unchecked; export it again to add one",
            file=sys.stderr,
        )
        return
    if found.get(DIGEST_KEY) != onnx_digest(onnx_model):
        raise InputError(
            f"{path} is corrupted: its contents do not match the SHA-256 digest it was exported "
            "with (damaged in transfer or on disk?); get a fresh copy or export it again"
        )


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file written by ptqlib's export, checking its digest, or raise a one-line
    ValueError saying why it is not one (FileNotFoundError if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        onnx_model = onnx.load(path)
    except (DecodeError, ValueError) as error:
        raise InputError(
            f"{path} is not a valid ONNX file: corrupt, truncated, or not ONNX at all "
            f"({type(error).__name__})"
        ) from None
    if onnx_model.producer_name == PRODUCER or DIGEST_KEY in metadata(onnx_model):
        check_onnx_digest(onnx_model, path)
    if not onnx_model.graph.node:
        raise InputError(f"{path} is not a valid ONNX file (it holds no graph)")
    kind = metadata(onnx_model).get("ptqlib.kind")
    if onnx_model.producer_name != PRODUCER or kind not in ("int8", "fp32"):
        raise InputError(
            f"{path} was not written by `python -m ptqlib export` (producer "
            f"{onnx_model.producer_name or 'unknown'!r}); ptqlib evaluates only its own exports"
        )
    try:
        onnx.checker.check_model(onnx_model)
    except onnx.checker.ValidationError as error:
        first_line = str(error).strip().splitlines()[0]
        raise InputError(f"{path} fails the ONNX checker: {first_line}") from None
    return onnx_model


def load_onnx_model(path: str | os.PathLike, threads: int = 2) -> OnnxModel:
    """:func:`load_onnx`, then an ONNX Runtime session for it."""
    onnx_model = load_onnx(path)
    try:
        return OnnxModel(onnx_model, threads)
    except ORT_ERRORS as error:
        first_line = str(error).strip().splitlines()[0]
        raise InputError(f"{path}: ONNX Runtime cannot run it: {first_line}") from None


def optimized_op_types(onnx_model: onnx.ModelProto, folder: str | os.PathLike) -> list[str]:
    """The operators ORT really runs after its graph optimizations (e.g. QGemm), in order.
    ORT writes the optimized graph to a file in ``folder``, which is read back."""
    options = session_options()
    options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
    onnxruntime.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


# --- parity with ptqlib, layer by layer --------------------------------------------------------


def with_requantization(model: Int8Model, requantization: str) -> Int8Model:
    """The same INT8 model (same integers and scales) with the other ``requantization``,
    e.g. a loaded checkpoint made to compute as ONNX Runtime does."""
    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model, got {type(model).__name__}")
    requantization = requantization_mode(requantization)
    layers = []
    for layer in model.layers:
        if isinstance(layer, (Int8Linear, Int8Conv2d)):
            arguments = [layer.weight, layer.bias, layer.weight_qparams, layer.input_qparams]
            arguments += [layer.output_qparams, layer.relu]
            if isinstance(layer, Int8Conv2d):
                layer = Int8Conv2d(
                    *arguments, layer.stride, layer.padding, layer.name, requantization,
                    layer.groups,
                )  # fmt: skip
            else:
                layer = Int8Linear(*arguments, layer.name, requantization)
        layers.append(layer)
    return Int8Model(model.input_qparams, layers, requantization).eval()


@dataclass(frozen=True)
class LayerParity:
    """How the integers of one quantized tensor compare between ptqlib and ORT."""

    name: str
    values: int
    identical: float
    within_one: float
    max_difference: int


def ptqlib_integers(model: Int8Model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """ptqlib's quantized input and every layer's quantized output, as ORT names them
    (``input_quantized``, ``<layer>_quantized``), in their own dtype (uint8 0..255)."""
    carriers = model.quantize_input(images).flatten(1)
    integers = {"input_quantized": _from_carriers(carriers, model.input_qparams.dtype)}
    for layer in model.layers:
        carriers = layer(carriers)
        if isinstance(layer, Int8Linear):
            dtype = layer.output_qparams.dtype
            integers[f"{layer.name}_quantized"] = _from_carriers(carriers, dtype)
    return integers


def _from_carriers(carriers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    offset = 128 if dtype == torch.uint8 else 0
    return carriers.to(torch.int64) + offset


@torch.no_grad()
def layer_parity(
    model: Int8Model, onnx_model: OnnxModel, images: torch.Tensor, batch_size: int = 1000
) -> list[LayerParity]:
    """Compare ptqlib's integers with ORT's, tensor by tensor, on ``images``. ``onnx_model``
    must be the export of ``model`` with ``expose_integers=True``."""
    differences: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        ours = ptqlib_integers(model, batch)
        theirs = onnx_model.run(batch)
        missing = sorted(set(ours) - set(theirs))
        if missing:
            raise InputError(
                f"onnx_model: has no output {missing[0]!r}; export with expose_integers=True"
            )
        for name, integers in ours.items():
            ort_integers = torch.from_numpy(theirs[name].astype(np.int64))
            differences.setdefault(name, []).append((integers - ort_integers).abs().flatten())
    rows = []
    for name, parts in differences.items():
        difference = torch.cat(parts)
        rows.append(
            LayerParity(
                name=name,
                values=difference.numel(),
                identical=float((difference == 0).double().mean()),
                within_one=float((difference <= 1).double().mean()),
                max_difference=int(difference.max()),
            )
        )
    return rows


def onnx_runtime_models(
    fp32_model: nn.Sequential, int8_model: Int8Model, threads: int = 2
) -> dict[str, OnnxModel]:
    """The FP32 model and ptqlib's INT8 model, exported and loaded in ONNX Runtime:
    ``{"ort_fp32": ..., "ort_int8": ...}`` for the latency table."""
    return {
        "ort_fp32": OnnxModel(fp32_to_onnx(fp32_model), threads),
        "ort_int8": OnnxModel(int8_to_onnx(int8_model), threads),
    }
