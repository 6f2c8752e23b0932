"""Prefect's temporary server as the command line starts it: the flow run is recorded in it, nothing
is left running when the command ends, and a server named by Prefect's settings wins."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import write_flow_config


def _without_server(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               COLUMNS="120")
    return env


def _alive_in(session: int) -> list[str]:
    """The command lines of the processes of ``session`` still running (zombies left out: where no
    init reaps orphans, an orphan that ended stays one)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":  # process group, state
                alive.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            continue
    return alive


def _gone(session: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive_in(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not _alive_in(session)


@pytest.mark.slow
def test_a_command_without_a_server_records_its_flow_run_in_a_temporary_one_and_leaves_nothing_running(tmp_path):
    config = write_flow_config(tmp_path, n_customers=300)
    env = _without_server(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "segml", "run", str(config)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Results are in" in out
    # Every process the command started (the server, the drawing worker) ended with it.
    assert _gone(process.pid)
    # The temporary server kept its database in PREFECT_HOME: the flow run is there, completed.
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        runs = db.execute("SELECT name, state_type FROM flow_run").fetchall()
    assert len(runs) == 1 and runs[0][1] == "COMPLETED" and "as of" in runs[0][0]
    # Its pages are gone with it: no link to them in the MLflow run.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()],
        filter_string="tags.`segml.prefect.flow_run_id` != ''")[0]
    assert "segml.prefect.flow_run_url" not in run.data.tags


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_command_killed_mid_run_leaves_neither_the_server_nor_the_drawing_worker_running(tmp_path):
    config = write_flow_config(tmp_path, n_customers=300)
    process = subprocess.Popen([sys.executable, "-m", "segml", "run", str(config)], env=_without_server(tmp_path),
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("uvicorn" in c for c in _alive_in(process.pid)):
        time.sleep(0.1)
    assert any("uvicorn" in c for c in _alive_in(process.pid)), "the temporary server never started"
    time.sleep(1)  # the drawing worker spawned too
    process.kill()  # no exit handlers run
    process.wait()
    assert _gone(process.pid), _alive_in(process.pid)


CHILD = textwrap.dedent("""
    import os, sys
    from segml import prefect_server
    prefect_server.start()
    process = prefect_server._process
    os.environ["PREFECT_API_URL"] = sys.argv[1]   # as a profile or prefect.toml would name a server
    from prefect.settings import PREFECT_API_URL
    prefect_server.adopt()
    process.wait(timeout=30)                      # stopped, unused
    print(PREFECT_API_URL.value(), prefect_server.url(), os.environ.get(prefect_server.TEMPORARY))
""")


def test_a_server_named_by_prefects_settings_wins_and_the_temporary_one_is_stopped(tmp_path):
    env = _without_server(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, "http://127.0.0.1:4999/api"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["http://127.0.0.1:4999/api", "None", "None"]


HEARTBEATS = textwrap.dedent("""
    from segml import prefect_server
    prefect_server.start()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
    prefect_server.adopt()
    print(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value())
""")


@pytest.mark.parametrize("server, asked, sent", [
    ("lasting", None, "None"),         # Prefect's default left alone: a command's runs send none
    ("lasting", "60", "60"),           # asked for in the environment: kept
    ("lasting", "toml", "45"),         # asked for in prefect.toml: kept
    ("temporary", "60", "None"),       # the temporary server ends with the command: never
])
def test_a_commands_flow_runs_send_heartbeats_only_when_prefects_settings_ask(tmp_path, server, asked, sent):
    env = _without_server(tmp_path)
    if server == "lasting":
        env["PREFECT_API_URL"] = "http://127.0.0.1:4999/api"
    if asked == "toml":
        (tmp_path / "prefect.toml").write_text("[flows]\nheartbeat_frequency = 45\n")
    elif asked:
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = asked
    done = subprocess.run([sys.executable, "-c", HEARTBEATS], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [sent]


MOVED = textwrap.dedent("""
    import subprocess, sys
    from segml import prefect_server
    prefect_server.start()
    from prefect.settings import PREFECT_API_URL
    prefect_server.adopt()
    first = prefect_server.url()
    prefect_server._process.kill(); prefect_server._process.wait()
    # as uvicorn ends when its port was taken meanwhile
    prefect_server._process = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    prefect_server._process.wait()
    prefect_server.wait(120)
    print(first != prefect_server.url(), PREFECT_API_URL.value() == prefect_server.url(), prefect_server.answers())
""")


def test_a_temporary_server_started_again_on_another_port_is_the_one_prefect_talks_to(tmp_path):
    done = subprocess.run([sys.executable, "-c", MOVED], env=_without_server(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]


def test_no_temporary_server_when_the_environment_names_one(monkeypatch):
    from segml import prefect_server

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4999/api")
    assert not prefect_server.wanted()
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    assert not prefect_server.wanted()


@pytest.mark.slow
def test_a_temporary_server_that_cannot_start_is_one_clear_error(tmp_path):
    config = write_flow_config(tmp_path, n_customers=100)
    env = {**_without_server(tmp_path), "PREFECT_HOME": "/dev/null/prefect"}  # no folder can be made there
    done = subprocess.run([sys.executable, "-m", "segml", "run", str(config)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Prefect's temporary server did not start (exit code 3, after 3 attempts")
    assert "PREFECT_HOME (/dev/null/prefect)" in last


@pytest.mark.slow
def test_on_a_terminal_a_first_run_shows_the_spinner_and_the_summary_only(tmp_path):
    """A new PREFECT_HOME on a terminal: no telemetry notice from Prefect, and the spinner's steps stay
    beside the spinner instead of also printing as 'info:' lines."""
    import pty
    import re
    import select

    config = write_flow_config(tmp_path, n_customers=300)
    env = {k: v for k, v in _without_server(tmp_path).items() if k != "DO_NOT_TRACK"}
    main, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "segml", "run", str(config)], env=env, cwd=tmp_path,
                               stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the command closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=60)
    os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert process.returncode == 0, text[-2000:]
    assert "reading and checking the purchases..." in text  # the spinner showed its steps
    assert "Results are in" in text
    assert "info:" not in text
    assert "anonymous usage data" not in text
