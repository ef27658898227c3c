"""Flash and RAM as the linker laid them out (notebook 11): ``arm-none-eabi-size`` and the map.

Notebook 10 *estimated* memory: flash = the bytes of the constant arrays, RAM = the largest
pair of neighbouring activation buffers. The linker knows exactly, for the whole program:

- ``arm-none-eabi-size -A firmware.elf`` lists every output section with its size: ``.text``
  (code), ``.rodata`` (constants: the weights), ``.data`` (initialised variables: in flash
  *and* in RAM), ``.bss`` (zeroed variables), ``.stack`` (the RAM reserved for the stack);
- the **map file** (``-Wl,-Map=...``) lists every input section that went into them. With
  ``-ffunction-sections -fdata-sections`` each function and each array has its own, named
  after it (``.rodata.fc1_weight``, ``.text.simplenet_int8_forward``), so the map says how
  many bytes each weight array and each function takes.

Flash holds ``.text + .rodata + .data`` (the initial values); RAM holds
``.data + .bss + .stack``. How much of the stack a run really used, the firmware measures by
painting it (``ptqlib.deploy.mcu.startup``).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ptqlib.deploy.mcu import tools

# The output sections that go to flash; .data goes to both (its initial values in flash).
FLASH_SECTIONS = (".text", ".rodata", ".ARM.exidx", ".data")
RAM_SECTIONS = (".data", ".bss", ".stack")
# An output section line of the map: name, address, size (a long name wraps to the next line).
OUTPUT_SECTION = re.compile(r"^(\.[\w.]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)")
# An input section: " .rodata.fc1_weight" then "0xADDRESS 0xSIZE file", on one or two lines.
INPUT_SECTION = re.compile(
    r"^ (\.[\w.$]+|COMMON)\s*(?:\n\s+)?0x([0-9a-f]+)\s+0x([0-9a-f]+) (\S.*)$", re.MULTILINE
)


def section_sizes(elf: str | Path) -> dict[str, int]:
    """Every allocated section of ``elf`` and its size in bytes, from ``size -A``."""
    tools.require_tools(tools.SIZE)
    result = subprocess.run(
        [tools.SIZE, "-A", str(elf)], capture_output=True, text=True, check=True, timeout=60
    )
    sizes = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0].startswith(".") and fields[1].isdigit():
            sizes[fields[0]] = int(fields[1])
    return sizes


@dataclass(frozen=True)
class MemoryUse:
    """Bytes of each kind in a linked firmware, from its section sizes."""

    code: int  # .text
    constants: int  # .rodata (+ .ARM.exidx)
    data: int  # .data: initialised variables
    bss: int  # .bss: zeroed variables
    stack: int  # .stack: reserved

    @property
    def flash(self) -> int:
        return self.code + self.constants + self.data

    @property
    def ram(self) -> int:
        return self.data + self.bss + self.stack


def memory_use(sizes: dict[str, int]) -> MemoryUse:
    """The section sizes of ``section_sizes`` as code, constants, data, bss and stack."""
    return MemoryUse(
        code=sizes.get(".text", 0),
        constants=sizes.get(".rodata", 0) + sizes.get(".ARM.exidx", 0),
        data=sizes.get(".data", 0),
        bss=sizes.get(".bss", 0),
        stack=sizes.get(".stack", 0),
    )


@dataclass(frozen=True)
class MapEntry:
    """One input section in the map: where it went, its name, size and the file it is from."""

    output_section: str
    name: str
    size: int
    source: str

    @property
    def symbol(self) -> str:
        """The function or array it holds: ``.rodata.fc1_weight`` -> ``fc1_weight``,
        ``.text.startup.main`` -> ``main``."""
        parts = self.name.split(".")
        if len(parts) > 3 and parts[2] == "startup":
            return parts[3]
        return parts[2] if len(parts) > 2 else self.name


def map_entries(map_text: str) -> list[MapEntry]:
    """Every input section with a size, in the order of the map's "Linker script and memory
    map" part, each under the output section it went into."""
    start = map_text.find("Linker script and memory map")
    body = map_text[start:] if start >= 0 else map_text
    output_starts = [
        (match.start(), match.group(1))
        for match in re.finditer(r"^(\.[\w.]+)(?=\s)", body, re.MULTILINE)
    ]
    entries = []
    for match in INPUT_SECTION.finditer(body):
        size = int(match.group(3), 16)
        owners = [name for position, name in output_starts if position <= match.start()]
        if size and owners:
            entries.append(MapEntry(owners[-1], match.group(1), size, match.group(4).strip()))
    return entries


def section_contents(map_text: str, output_section: str) -> dict[str, int]:
    """Bytes per function or array inside ``output_section`` (e.g. ``.rodata``), largest
    first."""
    sizes: dict[str, int] = {}
    for entry in map_entries(map_text):
        if entry.output_section == output_section:
            sizes[entry.symbol] = sizes.get(entry.symbol, 0) + entry.size
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))


def overflow_bytes(linker_lines: list[str], region: str = "FLASH") -> int | None:
    """N of the linker's ``region `FLASH' overflowed by N bytes``, or None."""
    for line in linker_lines:
        match = re.search(rf"region `{region}' overflowed by (\d+) bytes", line)
        if match:
            return int(match.group(1))
    return None
