"""ptqlib.hardware: what the machine is and how busy other processes keep it."""

import subprocess
import sys
import time

import pytest

from ptqlib import hardware

SPIN = "import time\nend = time.time() + 2.0\nwhile time.time() < end: pass"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_cores_busy_elsewhere_sees_another_process():
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.3)  # let it start
        busy = hardware.cores_busy_elsewhere(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process is one busy core on an idle machine; on a busy one the others
    # add to it. Either way well above the ~0 of an idle machine.
    assert busy is not None and busy >= 0.3


def test_cores_busy_elsewhere_is_none_without_proc_stat(monkeypatch):
    monkeypatch.setattr(hardware, "_busy_cpu_seconds", lambda: None)
    assert hardware.cores_busy_elsewhere(0.01) is None
