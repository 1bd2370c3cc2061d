"""memory.peak_memory_mb: a process's own peak, not its parent's (tunelab run's variants, sweeps' trials)."""
import subprocess
import sys

import pytest

from tunelab.memory import peak_memory_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited ru_maxrss is Linux's")
def test_child_of_a_big_process_reports_its_own_peak():
    held = bytearray(800 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # resident, not just reserved
    parent, kind = peak_memory_mb("cpu")
    assert kind == "cpu_peak_rss" and parent > 800
    code = ("from tunelab.memory import peak_memory_mb; import resource; "
            "print(peak_memory_mb('cpu')[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    own, inherited = float(out[0]), float(out[1])
    assert inherited > 800  # what getrusage says: the parent's 800 MB (why memory.py does not use it)
    assert own < 300, own  # the child itself: Python and an import
    del held
