"""The parts of ``evaluate`` and ``export`` for C (notebooks 10 and 11): evaluating a C
directory or Cortex-M firmware, and writing the model as C or as firmware.

Each function takes the parsed arguments (or the loaded model), prints its result and
returns the exit status, as the handlers of :mod:`ptqlib.app.commands` that call them. The
library modules are imported inside, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ptqlib.errors import InputError


def run_evaluate_c(args: argparse.Namespace) -> int:
    """``evaluate --checkpoint DIR``: a directory written by ``export --format c``, checked
    (its digest), compiled and run through ctypes; the same report as for a checkpoint."""
    from ptqlib.data import load_mnist
    from ptqlib.deploy.c_runtime import load_c_model
    from ptqlib.evaluation import accuracy

    model = load_c_model(args.checkpoint)
    data = load_mnist(args.data_dir, splits=("test",), verbose=False)
    print(data.describe(), file=sys.stderr if args.json else sys.stdout)
    files = [path for path in Path(args.checkpoint).iterdir() if path.is_file()]
    result = {
        "checkpoint": args.checkpoint,
        "kind": model.kind,
        "accuracy": round(accuracy(model, data.test), 6),
        "n_test": len(data.test),
        "data_source": data.source,
        "size_bytes": sum(path.stat().st_size for path in files),
        "runtime": "c",
        "weight_bits": model.manifest["weight_bits"],
        "activation_bits": model.manifest["activation_bits"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"loaded an {model.kind.upper()} C model ({model.manifest['prefix']}.c, compiled "
            f"with {model.variant} flags): test accuracy {result['accuracy']:.2%} on "
            f"{result['n_test']:,} digits"
        )
    return 0


def run_evaluate_firmware(args: argparse.Namespace) -> int:
    """``evaluate --checkpoint DIR --target cortex-m4``: a directory written by ``export
    --target``, built, run in QEMU on the test split and stress images, every output compared
    with ptqlib (``ptqlib.deploy.mcu.parity``)."""
    from ptqlib.data import load_mnist
    from ptqlib.deploy.mcu import tools
    from ptqlib.deploy.mcu.emulator import LinkError
    from ptqlib.deploy.mcu.firmware import verify_firmware
    from ptqlib.deploy.mcu.parity import check_firmware, check_line

    manifest = verify_firmware(args.checkpoint)
    tools.require_tools()
    if manifest["target"] != args.target:
        raise InputError(
            f"--target {args.target}: {args.checkpoint} holds firmware for {manifest['target']}"
        )
    data = load_mnist(args.data_dir, splits=("test",), verbose=False)
    print(data.describe(), file=sys.stderr if args.json else sys.stdout)
    results = check_firmware(args.checkpoint, data.test)
    rows = {}
    for kernel, check in results.items():
        if isinstance(check, LinkError):
            rows[kernel] = {"fits": False, "linker": check.lines}
            continue
        rows[kernel] = {
            "fits": True,
            "identical": check.test.identical + check.stress.identical,
            "total": check.test.total + check.stress.total,
            "first_difference": check.test.first_difference or check.stress.first_difference,
            "accuracy": round(check.accuracy, 6),
            "instructions_per_inference": round(check.instructions),
            "stack_bytes_used": check.stack_bytes_used,
            "flash_bytes": check.memory.flash,
            "ram_bytes": check.memory.ram,
        }
    if args.json:
        summary = {key: manifest[key] for key in ("target", "part", "kind", "rounding")}
        print(json.dumps({"checkpoint": args.checkpoint, **summary, "kernels": rows}))
    else:
        print(
            f"{manifest['kind'].upper()} firmware for {manifest['part']} ({manifest['target']}), "
            "run in QEMU:"
        )
        for kernel, check in results.items():
            if isinstance(check, LinkError):
                print(f"{kernel}: does not link: {'; '.join(check.lines)}")
            else:
                print(check_line(check))
                print(
                    f"  flash {check.memory.flash:,} bytes, RAM {check.memory.ram:,} bytes "
                    f"(stack {check.stack_bytes_used:,} of {check.memory.stack:,} used)"
                )
    # 1 unless every kernel linked and gave every output: a firmware that does not fit its
    # part was not checked at all.
    passed = [row for row in rows.values() if row["fits"] and row["identical"] == row["total"]]
    return 0 if rows and len(passed) == len(rows) else 1


def export_as_c(model, out: str, model_name: str | None = None) -> int:
    """``export --format c``: the loaded model as C99 in the directory ``out``."""
    from ptqlib.deploy.c_export import export_c

    exported = export_c(model, out, model_name)
    files = ", ".join(sorted(path.name for path in exported.directory.iterdir()))
    print(
        f"wrote {exported.directory}: {files} (the {exported.kind.upper()} model as C99)\n"
        f"build the program with: cd {exported.directory} && {exported.build}"
    )
    return 0


def export_as_firmware(
    model, out: str, target: str, part: str | None, rounding: str, model_name: str | None
) -> int:
    """``export --format c --target cortex-m4``: the model's C plus Cortex-M firmware."""
    from ptqlib.deploy.mcu.firmware import export_firmware
    from ptqlib.deploy.mcu.targets import part_named, target_named

    core = target_named(target)
    chip = part_named(part, core)
    manifest = export_firmware(model, out, core, chip, rounding, model_name)
    kernels = ", ".join(f"firmware_{name}.elf" for name in manifest["kernels"])
    print(
        f"wrote {out}: {manifest['prefix']}.h/.c and the firmware for {chip.label}, "
        f"{core.name} ({len(manifest['files'])} files, firmware.json)\n"
        f"build {kernels} with the commands in {Path(out) / 'FIRMWARE_BUILD'}, or check them "
        "in QEMU: "
        f"python -m ptqlib evaluate --checkpoint {shlex.quote(out)} --target {core.name}"
    )
    return 0
