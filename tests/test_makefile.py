"""The Makefile's choice of Python (``make print-python``), with stub interpreters on PATH:
shell scripts that print a version, or fail as a pyenv shim of an uninstalled version does."""

import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

PYENV_SHIM = 'echo "pyenv: $(basename "$0"): command not found" >&2\nexit 127\n'


def stubs(folder: Path, interpreters: dict[str, str | None]) -> Path:
    """A bin folder of stub interpreters: ``name: version`` prints ``Python <version>``;
    ``name: None`` fails like a pyenv shim."""
    folder.mkdir()
    for name, version in interpreters.items():
        body = PYENV_SHIM if version is None else f'echo "Python {version}"\n'
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return folder


def print_python(tmp_path: Path, interpreters: dict[str, str | None], *arguments: str):
    """``make print-python`` with only the stubs (and the shell's tools) on PATH."""
    bin_folder = stubs(tmp_path / "bin", interpreters)
    tools = tmp_path / "tools"  # sh and the commands the recipe uses, without any python
    tools.mkdir()
    for tool in ("sh", "echo", "test"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    environment = {"PATH": f"{bin_folder}:{tools}", "HOME": str(tmp_path)}
    return subprocess.run(
        [MAKE, "-s", "-f", str(MAKEFILE), "print-python", *arguments],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "interpreters, chosen",
    [
        ({"python3.13": "3.13.0", "python3.12": "3.12.1", "python3.11": "3.11.7"}, "python3.13"),
        ({"python3.13": None, "python3.12": "3.12.1", "python3.11": "3.11.7"}, "python3.12"),
        # This machine: pyenv shims for 3.13 and 3.12 exist but fail; 3.11 runs.
        ({"python3.13": None, "python3.12": None, "python3.11": "3.11.7"}, "python3.11"),
        ({"python3.11": "3.11.7", "python3": "3.12.3"}, "python3.11"),
        ({"python3": "3.12.3"}, "python3"),
        # A name that lies about its version is judged by what it says when run.
        ({"python3.12": "3.10.14", "python3": "3.10.14", "python3.11": "3.11.2"}, "python3.11"),
    ],
)
def test_the_first_python_that_runs_and_is_3_11_or_newer(tmp_path, interpreters, chosen):
    result = print_python(tmp_path, interpreters)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == chosen


@pytest.mark.parametrize(
    "interpreters",
    [{"python3": "3.10.14"}, {"python3.12": None, "python3": "3.9.2"}, {}],
)
def test_no_suitable_python_is_one_clear_error(tmp_path, interpreters):
    result = print_python(tmp_path, interpreters)
    assert result.returncode != 0 and result.stdout == ""
    assert "no Python 3.11 or newer runs here" in result.stderr
    assert "give PYTHON=" in result.stderr


def test_python_on_the_command_line_or_in_the_environment_wins(tmp_path):
    interpreters = {"python3.13": "3.13.0", "python3.11": "3.11.7"}
    result = print_python(tmp_path, interpreters, "PYTHON=/opt/python/bin/python3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/opt/python/bin/python3"


def test_python_from_the_environment_wins(tmp_path):
    bin_folder = stubs(tmp_path / "bin", {"python3.13": "3.13.0"})
    result = subprocess.run(
        [MAKE, "-s", "-f", str(MAKEFILE), "print-python"],
        cwd=tmp_path,
        env={"PATH": f"{bin_folder}:{Path(shutil.which('sh')).parent}", "PYTHON": "my-python"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "my-python"


def test_this_machine_gets_a_python_that_runs(tmp_path):
    """Whatever is installed here: the chosen interpreter runs and is 3.11 or newer."""
    result = subprocess.run(
        [MAKE, "-s", "-f", str(MAKEFILE), "print-python"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    version = subprocess.run(
        [result.stdout.strip(), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "True"
