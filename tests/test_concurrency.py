"""segml's worker processes: they end with the run that started them and run none of the working directory's code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_workers_of_a_killed_process_exit_once_idle(tmp_path):
    # A killed run's worker processes used to linger for joblib's five idle minutes.
    child = textwrap.dedent("""
        import os, signal
        from joblib import delayed
        from pathlib import Path
        import segml.models as models

        models.WORKER_IDLE_SECONDS = 2
        models.workers(2)(delayed(abs)(i) for i in range(-8, 0))
        me = str(os.getpid())
        children = [p.parent.name for p in Path("/proc").glob("[0-9]*/stat")
                    if p.read_text().rsplit(")", 1)[1].split()[1] == me]
        print(" ".join(children), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9
    pids = [int(p) for p in done.stdout.split()]
    assert pids, done.stderr

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/status").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()

    deadline = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(p) for p in pids)



def test_worker_processes_do_not_import_code_from_the_working_directory(tmp_path):
    # Workers start as `python -m ...`: a concurrent.py in the working directory used to run inside them.
    (tmp_path / "concurrent.py").write_text(
        "import os\nopen(os.path.join(os.path.dirname(__file__), f'ran-{os.getpid()}'), 'w').close()\n"
        "raise ImportError('the working directory was on the import path')\n")
    script = tmp_path / "scripts" / "fit.py"
    script.parent.mkdir()
    script.write_text("from joblib import delayed\nfrom segml.models import workers\n"
                      "print(workers(2)(delayed(abs)(i) for i in range(-4, 0)))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[4, 3, 2, 1]"
    assert list(tmp_path.glob("ran-*")) == []


def test_the_command_does_not_import_code_from_the_working_directory(tmp_path):
    # `python -m segml` puts the working directory first on the import path.
    (tmp_path / "typer.py").write_text("raise SystemExit('the working directory was on the import path')\n")
    done = subprocess.run([sys.executable, "-m", "segml", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
