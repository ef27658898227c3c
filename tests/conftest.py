"""Shared fixtures and helpers for the tests (no test module imports another)."""

import contextlib
import fcntl
import functools
import gzip
import http.server
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ptqlib.checkpoints import save_fp32
from ptqlib.data import DOWNLOAD_FAILED_NOTE, load_mnist
from ptqlib.training import load_or_train_baseline

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m ptqlib ARGS`` as a user runs it: exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "ptqlib", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def run_main(*args: str) -> subprocess.CompletedProcess:
    """``python -m ptqlib ARGS`` in this process (``ptqlib.app.cli.main``): exit status, stdout
    and stderr, like :func:`run_cli` without the seconds of starting Python and importing
    torch. The few tests that need a real process (the entry point itself, or stderr exactly
    as a user sees it, import-time warnings included) use :func:`run_cli`."""
    from ptqlib.app.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors and --help
            status = exit_.code
    return subprocess.CompletedProcess(
        ["python", "-m", "ptqlib", *args], status, stdout.getvalue(), stderr.getvalue()
    )


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """A run of :func:`run_cli` or :func:`run_main` that failed as bad input should: exit 2,
    one line on stderr containing ``message``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="session")
def offline_data(tmp_path_factory):
    """The offline MNIST sample (4,000 train / 1,000 test), whatever lies in data/."""
    empty = tmp_path_factory.mktemp("no-mnist-here")
    return load_mnist(empty, download=False, verbose=False)


@pytest.fixture(scope="session")
def offline_data_dir(tmp_path_factory) -> Path:
    """A data directory without MNIST in which a failed download is already noted: commands
    given ``--data-dir`` read the offline sample at once, on any network, without importing
    torchvision to try again (``tests/test_data.py`` tests the attempt and its note). Tests
    add no files to it."""
    folder = tmp_path_factory.mktemp("offline-data")
    (folder / DOWNLOAD_FAILED_NOTE).write_text("MNIST could not be downloaded: no network\n")
    return folder


@pytest.fixture(scope="session")
def quantized_checkpoints(tmp_path_factory, offline_data, offline_data_dir) -> dict:
    """The cached FP32 baseline (``baseline``) saved as a checkpoint (``fp32``), quantized by
    ``python -m ptqlib quantize`` in-process (``int8``), with ``data`` the
    :func:`offline_data_dir` (so the CLI reads the offline sample). Tests copy these files
    before changing them."""
    folder = tmp_path_factory.mktemp("checkpoints")
    data_dir = offline_data_dir
    baseline, meta = load_or_train_baseline(offline_data, progress=False)
    paths = {"fp32": save_fp32(baseline, folder / "fp32.pt", meta), "data": data_dir}
    paths["int8"] = folder / "int8.pt"
    result = run_main(
        "quantize", "--checkpoint", str(paths["fp32"]), "--out", str(paths["int8"]),
        "--calib", "200", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {**paths, "baseline": baseline}


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file's bytes for a uint8 tensor: magic 0x0000080N, N big-endian sizes, data."""
    header = struct.pack(">i", 0x0800 + array.dim()) + struct.pack(f">{array.dim()}i", *array.shape)
    return header + array.to(torch.uint8).numpy().tobytes()


def _write_idx_split(directory, split: str, n: int = 20, compress: bool = False, seed: int = 0):
    """Write a small, valid IDX split (``train`` or ``t10k``) into ``directory``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    written = {}
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        data = idx_bytes(array)
        name = f"{split}-{kind}-idx{ndim}-ubyte" + (".gz" if compress else "")
        path = directory / name
        path.write_bytes(gzip.compress(data) if compress else data)
        written[kind] = path
    return images, labels, written


@pytest.fixture
def write_idx_split():
    """``write_idx_split(directory, split, n=20, compress=False, seed=0)``: write a small, valid
    IDX split and return ``(images, labels, {"images": path, "labels": path})``."""
    return _write_idx_split


# --- the static site, built once per session (test_docs.py and test_browser.py) ---------------


@dataclass
class Site:
    html_dir: Path
    warnings: str


def build_site(out_dir: Path) -> Site:
    """Run ``make docs``'s sphinx-build into ``out_dir``, unless a test already did."""
    html_dir = out_dir / "html"
    warnings_file = out_dir / "warnings.txt"
    if not (html_dir / "index.html").exists():
        command = [
            sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E",
            "-c", "docs", "-d", str(out_dir / "doctrees"), "-w", str(warnings_file),
            ".", str(html_dir),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return Site(html_dir, warnings_file.read_text())


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    # A fixed folder under the session's temp dir: test_browser.py reuses the same build.
    return build_site(tmp_path_factory.getbasetemp() / "docs_site")


# --- headless Chromium over the DevTools protocol (test_browser.py, test_jupyterlab.py) ------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
IN_CI = os.environ.get("CI", "").lower() == "true"
# Flags for a quiet, offline, throwaway browser: no sandbox (CI runs as root), no GPU,
# and none of the background services that would phone home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--remote-debugging-pipe",
]
TIMEOUT_SECONDS = 60


class DevToolsPipe:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, chromium: str, user_data_dir: Path, log_file: Path) -> None:
        commands_read, commands_write = _pipe_above_10()
        replies_read, replies_write = _pipe_above_10()
        self.log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        argv = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"]
        # Chromium reads commands on fd 3 and writes replies on fd 4; its output goes to
        # the log. Our pipe ends sit at fd >= 10, so these moves cannot clobber each other.
        self.pid = os.posix_spawn(
            chromium,
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, self.log_fd, 1),
                (os.POSIX_SPAWN_DUP2, self.log_fd, 2),
                (os.POSIX_SPAWN_DUP2, commands_read, 3),
                (os.POSIX_SPAWN_DUP2, replies_write, 4),
            ],
        )
        os.close(commands_read)
        os.close(replies_write)
        self.commands = os.fdopen(commands_write, "wb", buffering=0)
        self.replies = os.fdopen(replies_read, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = self.replies.read(65536)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (see chromium.log)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session_id: str | None = None, **params) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        self.commands.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for_event(self, method: str, session_id: str) -> None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not any(
            event.get("method") == method and event.get("sessionId") == session_id
            for event in self.events
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event within {TIMEOUT_SECONDS} s")
            self.events.append(self._read_message())

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        self.commands.close()
        self.replies.close()
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self.log_fd)


def _pipe_above_10() -> tuple[int, int]:
    """A pipe whose two ends are file descriptors >= 10, closed on exec unless moved."""
    read_end, write_end = os.pipe()
    moved = (fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, 10),
             fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 10))  # fmt: skip
    os.close(read_end)
    os.close(write_end)
    return moved


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # keep the test output clean; failed requests show up in the browser's log


@pytest.fixture(scope="module")
def site_url(site: Site) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site.html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevToolsPipe]:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("chromium is not installed: .ci/run must install Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    profile = tmp_path_factory.mktemp("chromium_profile")
    pipe = DevToolsPipe(CHROMIUM, profile, profile.parent / "chromium.log")
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def simplenet_c(tmp_path_factory, offline_data) -> dict:
    """The cached FP32 SimpleNet (``fp32``), its INT8 model on raw pixels (``int8``:
    normalisation folded, calibrated on 200 digits) and both exported as C (``fp32_dir``,
    ``int8_dir``). Tests copy the directories before changing them."""
    from ptqlib.calibration import calibrate
    from ptqlib.data import calibration_images
    from ptqlib.deploy.c_export import export_c
    from ptqlib.int8_model import convert
    from ptqlib.models import fold_input_normalization

    folder = tmp_path_factory.mktemp("simplenet-c")
    fp32, _ = load_or_train_baseline(offline_data, progress=False)
    pixel_model = fold_input_normalization(fp32)
    pixels = calibration_images(offline_data.train.pixel_values(), 200)
    calibration = calibrate(pixel_model, pixels, progress=False)
    int8 = convert(pixel_model, calibration.qparams, pixel_input=True)
    return {
        "fp32": fp32,
        "int8": int8,
        "fp32_dir": export_c(fp32, folder / "fp32", "simplenet").directory,
        "int8_dir": export_c(int8, folder / "int8", "simplenet").directory,
    }


# A C program for the sanitizer tests: runs a model's forward function over every image of a
# file, in chunks of each batch size given, with the input and the output of every call
# ending right before a PROT_NONE page (gcc's ASan does not see every vector load; the page
# does). Compiled with -DHEADER, -DELEMENT, -DFORWARD, -DINPUTS, -DOUTPUTS.
GUARD_PAGE_DRIVER_C = r"""
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include HEADER

static void *against_guard(size_t bytes, void **base, size_t *mapped)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t pages = (bytes + page - 1) / page + 1;
    uint8_t *memory = mmap(NULL, pages * page, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED || mprotect(memory + (pages - 1) * page, page, PROT_NONE) != 0)
        exit(3);
    *base = memory;
    *mapped = pages * page;
    return memory + (pages - 1) * page - bytes;
}

int main(int argc, char **argv)
{
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (!in || !out) return 2;
    fseek(in, 0, SEEK_END);
    const long bytes = ftell(in);
    rewind(in);
    const long images = bytes / (long)(sizeof(ELEMENT) * INPUTS);
    ELEMENT *all = malloc((size_t)bytes), *result = malloc(sizeof(ELEMENT) * OUTPUTS * images);
    if (!all || !result || fread(all, 1, (size_t)bytes, in) != (size_t)bytes) return 2;
    fclose(in);
    for (int a = 3; a < argc; a++) {
        const long batch = atol(argv[a]);
        void *x_base, *y_base;
        size_t x_mapped, y_mapped;
        ELEMENT *x = against_guard(sizeof(ELEMENT) * INPUTS * batch, &x_base, &x_mapped);
        ELEMENT *y = against_guard(sizeof(ELEMENT) * OUTPUTS * batch, &y_base, &y_mapped);
        for (long first = 0; first < images; first += batch) {
            const long count = images - first < batch ? images - first : batch;
            ELEMENT *xc = x + (batch - count) * INPUTS, *yc = y + (batch - count) * OUTPUTS;
            memcpy(xc, all + first * INPUTS, sizeof(ELEMENT) * INPUTS * count);
            FORWARD(xc, yc, (int32_t)count);
            memcpy(result + first * OUTPUTS, yc, sizeof(ELEMENT) * OUTPUTS * count);
        }
        fwrite(result, sizeof(ELEMENT), (size_t)(OUTPUTS * images), out);
        munmap(x_base, x_mapped);
        munmap(y_base, y_mapped);
    }
    fclose(out);
    free(all);
    free(result);
    return 0;
}
"""


def run_guarded(
    directory, source: str, kind: str, images, batches, tmp_path, flags=(), compiler=None
):
    """Compile ``source`` of the export in ``directory`` with the guard-page driver and
    ASan + UBSan (every error fatal), run it on ``images`` (``[N, inputs]`` uint8 or float)
    at each of ``batches``: one ``[N, outputs]`` tensor per batch size. ``compiler``: the
    system's C compiler unless named (clang's UBSan sees pointer arithmetic gcc's misses)."""
    from ptqlib.deploy.c_export import BUILD_FLAGS, verify_directory
    from ptqlib.deploy.c_runtime import find_compiler

    manifest = verify_directory(directory)
    prefix, element = manifest["prefix"], "uint8_t" if kind == "int8" else "float"
    driver = tmp_path / "driver.c"
    driver.write_text(GUARD_PAGE_DRIVER_C)
    program = tmp_path / f"{source}.guarded"
    command = [
        compiler or find_compiler(), *[flag for flag in BUILD_FLAGS if flag != "-O3"], "-O1", "-g",
        "-fsanitize=address,undefined", "-fno-sanitize-recover=all", *flags,
        f'-DHEADER="{prefix}.h"', f"-DELEMENT={element}", f"-DFORWARD={prefix}_forward",
        f"-DINPUTS={manifest['inputs']}", f"-DOUTPUTS={manifest['outputs']}",
        "-I", str(directory), "-o", str(program), str(driver), str(directory / source),
    ]  # fmt: skip
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    images.contiguous().numpy().tofile(tmp_path / "images.bin")
    result = subprocess.run(
        [str(program), str(tmp_path / "images.bin"), str(tmp_path / "out.bin"),
         *map(str, batches)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    dtype = torch.uint8 if kind == "int8" else torch.float32
    raw = torch.from_file(str(tmp_path / "out.bin"), size=len(batches) * len(images) * manifest[
        "outputs"], dtype=dtype)  # fmt: skip
    return list(raw.reshape(len(batches), len(images), manifest["outputs"]))
