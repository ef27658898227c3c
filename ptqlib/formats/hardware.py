"""Which hardware computes in which number format, each entry with its source.

A format helps twice: it makes the weights smaller (fewer bytes to read, which is what
limits a small batch), and, where a matrix unit takes it as an operand, it makes the
arithmetic cheaper. The first works everywhere; the second only where the silicon has it.
Where it does not, a kernel *emulates* the format: it decodes each code to a type the
hardware multiplies (a lookup in a 16- or 256-entry table, or shifts and masks), then computes
in that type. The bytes saved stay saved; the arithmetic costs at least what the decoded type
costs, plus the decoding. Group-wise INT4 and codebooks are always used this way
(weight-only: llama.cpp, GPTQ and AWQ kernels unpack to FP16 or INT8 next to the multiply).

``TABLE`` holds, for each platform and format, one of:

- ``native``: a matrix or dot-product instruction takes the format as an operand;
- ``convert``: instructions convert to and from it, the multiply runs in a wider type;
- ``emulated``: no support; software decodes it (the cost above);

and the key of its source in ``SOURCES`` (vendor manuals and whitepapers, by section).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NATIVE, CONVERT, EMULATED = "native", "convert", "emulated"
STATUSES = (NATIVE, CONVERT, EMULATED)
FORMAT_COLUMNS = ("INT8", "FP16/BF16", "FP8", "MXFP8/MXFP6", "MXFP4", "NVFP4")

SOURCES = {
    "intel-sdm": "Intel 64 and IA-32 Architectures Software Developer's Manual, Vol. 2: "
    "VPDPBUSD (AVX512_VNNI, AVX-VNNI), VDPBF16PS (AVX512_BF16), AVX512-FP16; "
    "https://www.intel.com/sdm",
    "intel-ise": "Intel Architecture Instruction Set Extensions and Future Features Programming "
    "Reference (319433), chapters on Intel AMX: AMX-INT8, AMX-BF16 (4th Gen Xeon, Sapphire "
    "Rapids), AMX-FP16 (Granite Rapids); AVX10.2 FP8 conversions and AMX-FP8 (future)",
    "arm-arm": "Arm Architecture Reference Manual for A-profile architecture (DDI 0487): "
    "FEAT_DotProd (SDOT/UDOT, Armv8.2-A), FEAT_I8MM (SMMLA/UMMLA/USMMLA, Armv8.6-A), "
    "FEAT_FP16, FEAT_BF16 (BFDOT/BFMMLA); https://developer.arm.com/documentation/ddi0487",
    "arm-2023": "Arm, 'Arm A-Profile Architecture Developments 2023' (FEAT_FP8, FEAT_FP8DOT2/"
    "FP8DOT4, FEAT_FP8FMA: E4M3 and E5M2 with a scaling register)",
    "h100": "NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), 'FP8 Tensor Cores' and "
    "'Transformer Engine': E4M3 and E5M2 operands, FP16/FP32 accumulation; INT8, FP16, BF16",
    "blackwell": "NVIDIA Blackwell Architecture Technical Brief (2024), fifth-generation Tensor "
    "Cores: FP4 and FP6 with micro-tensor scaling (MXFP4, MXFP6, MXFP8 and NVFP4)",
    "ptx": "NVIDIA PTX ISA (8.7 and later), mma/tcgen05.mma with .block_scale: .kind::mxf8f6f4 "
    "(E4M3, E5M2, E3M2, E2M3, E2M1 with UE8M0 scales, blocks of 32), .kind::mxf4 and "
    ".kind::mxf4nvf4 (E2M1 with UE8M0 scales per 32 or UE4M3 scales per 16)",
    "armv7m": "Armv7-M Architecture Reference Manual (DDI 0403): the FPv4-SP / FPv5 "
    "floating-point extension converts to and from half precision (VCVTB, VCVTT)",
    "cmsis-nn": "Arm CMSIS-NN documentation (https://arm-software.github.io/CMSIS-NN/): INT8 "
    "kernels on the DSP extension (SMLAD: two 16-bit multiply-accumulates) and on Helium (MVE)",
    "helium": "Arm Helium Technology: M-Profile Vector Extension (MVE) for Cortex-M55/M85: "
    "8-bit integer vector multiply-accumulate (VMLADAV) and half-precision (FP16) vectors",
}


@dataclass(frozen=True)
class Platform:
    """One row: a platform, its support for each format, and where that is written."""

    name: str
    support: dict[str, tuple[str, str]]  # format column -> (native/convert/emulated, source)


COLUMN_KEYS = dict(
    zip(("int8", "fp16", "fp8", "mx8", "mxfp4", "nvfp4"), FORMAT_COLUMNS, strict=True)
)


def _row(name: str, source: str, **support: str | tuple[str, str]) -> Platform:
    """A row whose unlisted formats are emulated. ``support`` maps a column's short name
    (``int8``, ``fp16``, ``fp8``, ``mx8``, ``mxfp4``, ``nvfp4``) to a status, or to a pair
    (status, source) where the row's ``source`` is not the one that says it."""
    cells = {column: (EMULATED, source) for column in FORMAT_COLUMNS}
    for key, value in support.items():
        cells[COLUMN_KEYS[key]] = (value, source) if isinstance(value, str) else value
    return Platform(name, cells)


TABLE = (
    _row("x86 AVX-512 (VNNI, BF16)", "intel-sdm", int8=NATIVE, fp16=NATIVE),
    _row("x86 AMX (Sapphire / Granite Rapids)", "intel-ise", int8=NATIVE, fp16=NATIVE),
    _row(
        "Arm A-profile (dot product, i8mm)",
        "arm-arm",
        int8=NATIVE,
        fp16=NATIVE,
        fp8=(NATIVE, "arm-2023"),
    ),
    _row("NVIDIA Hopper (H100)", "h100", int8=NATIVE, fp16=NATIVE, fp8=NATIVE),
    _row(
        "NVIDIA Blackwell (B200)",
        "blackwell",
        int8=NATIVE,
        fp16=NATIVE,
        fp8=NATIVE,
        mx8=(NATIVE, "ptx"),
        mxfp4=(NATIVE, "ptx"),
        nvfp4=(NATIVE, "ptx"),
    ),
    _row("Cortex-M4/M7 (DSP extension)", "cmsis-nn", int8=NATIVE, fp16=(CONVERT, "armv7m")),
    _row("Cortex-M55/M85 (Helium)", "helium", int8=NATIVE, fp16=NATIVE),
)

NOTES = (
    "x86: AVX10.2 (FP8 conversions) and AMX-FP8 (FP8 tile products) are announced for future "
    "Xeons [intel-ise]; AMX-FP16 is Granite Rapids only, Sapphire Rapids has AMX-BF16.",
    "Arm FP8 (FEAT_FP8, FP8DOT2/4, FP8FMA) is an option of the 2023 architecture: check a "
    "core's feature list.",
    "Cortex-M4/M7 multiply INT8 as pairs of 16-bit values (SXTB16, then SMLAD) [cmsis-nn].",
    "Hopper multiplies FP8 with one scale per operand; MX and NVFP4 block scales there, and "
    "every block format on the CPUs, are applied in software.",
    "INT4 g32/g128 and codebooks are weight-only everywhere: unpacked next to the multiply.",
)


def markdown_table() -> str:
    """The table as Markdown, each cell with its source key in brackets, then the sources."""
    header = "| platform | " + " | ".join(FORMAT_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(FORMAT_COLUMNS) + 1)]
    for platform in TABLE:
        cells = [f"{status} [{source}]" for status, source in platform.support.values()]
        lines.append(f"| {platform.name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.extend(f"- [{key}] {text}" for key, text in SOURCES.items())
    lines.extend(f"- {note}" for note in NOTES)
    return "\n".join(lines)


# torch.cpu.get_capabilities() flags that say which formats this CPU multiplies natively.
CPU_FLAGS = {
    "INT8 dot products": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "BF16/FP16 arithmetic": ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16"),
    "FP8 conversions (AVX10.2)": ("avx10_2",),
}


def cpu_format_support() -> dict[str, list[str]]:
    """For each kind of arithmetic in :data:`CPU_FLAGS`, the flags this CPU has (as PyTorch
    detects them; an empty list: none, so those formats are emulated here)."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return {
        kind: [flag for flag in flags if capabilities.get(flag)]
        for kind, flags in CPU_FLAGS.items()
    }
