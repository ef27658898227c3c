"""Is the cross-compiler and the emulator installed? One line says what is missing.

Notebook 11 needs three programs, from two Debian/Ubuntu packages:

- ``arm-none-eabi-gcc`` and ``arm-none-eabi-size`` (package ``gcc-arm-none-eabi``, which
  brings ``binutils-arm-none-eabi``): the C compiler, linker and size tool for bare-metal
  Arm. No C library is needed: the firmware is freestanding.
- ``qemu-system-arm`` (package ``qemu-system-arm``): the emulator of Arm's MPS2 boards.

``make mcu-tools`` installs them with apt where it can. Elsewhere: Arm's GNU toolchain
releases for any OS, and QEMU from its web site or Homebrew (``brew install qemu
arm-none-eabi-gcc``).
"""

from __future__ import annotations

import shutil
import subprocess

from ptqlib.errors import InputError

COMPILER = "arm-none-eabi-gcc"
SIZE = "arm-none-eabi-size"
OBJDUMP = "arm-none-eabi-objdump"
EMULATOR = "qemu-system-arm"
# Program -> the Debian package that installs it.
PACKAGES = {
    COMPILER: "gcc-arm-none-eabi",
    SIZE: "gcc-arm-none-eabi",
    OBJDUMP: "gcc-arm-none-eabi",
    EMULATOR: "qemu-system-arm",
}
INSTALL_HINT = "make mcu-tools, or sudo apt-get install --no-install-recommends {packages}"


def missing_tools(*programs: str) -> list[str]:
    """The ``programs`` (default: all four) that are not on PATH."""
    return [program for program in programs or PACKAGES if shutil.which(program) is None]


def missing_tools_message(missing: list[str]) -> str:
    """One line: what is missing and how to install it."""
    packages = " ".join(dict.fromkeys(PACKAGES[program] for program in missing))
    return f"{', '.join(missing)} not found: install with " + INSTALL_HINT.format(packages=packages)


def require_tools(*programs: str) -> None:
    """Raise an InputError (one line) unless every one of ``programs`` is installed."""
    missing = missing_tools(*programs)
    if missing:
        raise InputError(missing_tools_message(missing))


def tool_version(program: str) -> str:
    """The first line of ``program --version``, or 'not installed'."""
    if shutil.which(program) is None:
        return "not installed"
    result = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else "unknown version"
