import subprocess
import sys
import time

from deepcomp.cpuload import ForeignLoad


def test_foreign_load_counts_other_processes_not_ours():
    with ForeignLoad() as own:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.3:  # our own busy loop is not foreign load
            pass
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        with ForeignLoad() as other:
            time.sleep(0.5)
    finally:
        hog.kill()
        hog.wait()
    assert other.cores is not None and other.cores > 0.5  # the busy child
    # On a shared machine others may run meanwhile; our own loop must not add a whole core.
    assert own.cores is not None and own.cores < other.cores + 1.0


def test_children_count_as_own_once_waited_for():
    busy = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 0.6: pass"
    with ForeignLoad(children=True) as mine, ForeignLoad() as plain:
        subprocess.run([sys.executable, "-c", busy], check=True)
    assert mine.cores is not None and plain.cores is not None
    assert plain.cores > mine.cores + 0.3  # the child's busy second is foreign only to the plain count
