"""Prefect's temporary server, started by segml the moment a command begins.

Without a Prefect server configured, Prefect starts a temporary one (SQLite
in ``$PREFECT_HOME``) when a flow first needs it, and waits for it: 3 to 6 s
on a small machine, more on a first run. segml's command line starts that
same server itself, as the first thing it does and before Prefect is even
imported, so that it boots on another core while the command imports its
modules, instead of after them. Importing Prefect's server package in the
command's own process to start it (what Prefect does) would cost that
process 2 s more; the command only needs the server's address.

:func:`start` launches the server's process (``uvicorn`` over Prefect's own
application factory, with the settings Prefect gives its temporary server: no
UI, ephemeral); :func:`adopt` then tells the Prefect just imported to talk to
it, unless Prefect's settings name a server of their own, in which case the
temporary one is stopped unused; :func:`ready` waits for it to answer before
the first flow starts. The process is stopped when the command exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from segml.children import LAUNCHER
from segml.errors import SegmlError

#: Set in the environment of a command whose Prefect server is the temporary one: its pages are gone
#: when the command ends, so no link to them is recorded.
TEMPORARY = "SEGML_PREFECT_TEMPORARY_SERVER"

_process: subprocess.Popen | None = None
_port: int | None = None
_settings: contextlib.ExitStack | None = None
_adopted = False  # whether this command's Prefect talks to the temporary server


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(port: int) -> subprocess.Popen:
    import importlib.util

    spec = importlib.util.find_spec("prefect")  # where Prefect lives, without importing it
    app_dir = os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else None
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    if app_dir:
        command[3:3] = ["--app-dir", app_dir]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    # The server ends with this process however it ends, not only through stop(): a launcher has the
    # kernel signal it when its parent dies, then becomes the server (nothing runs between fork and exec).
    command = [sys.executable, "-P", "-c", LAUNCHER, *command]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


#: uvicorn's exit code when the application does not start (Prefect's server reads it as a port taken
#: meanwhile, and starts again on another): tried this many times before giving up.
STARTUP_FAILURE, ATTEMPTS = 3, 3


def wanted() -> bool:
    """Whether a command should start the temporary server: no server named in the environment and
    Prefect's ephemeral mode not turned off there. (Prefect's profile and settings files are read
    once Prefect is imported: :func:`adopt` checks them.)"""
    if os.environ.get("PREFECT_API_URL"):
        return False
    allowed = os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").strip().lower()
    return allowed not in ("0", "false", "no", "off")


def start() -> None:
    """Start the temporary server in the background (see the module's notes); nothing if one runs."""
    global _process, _port
    if _process is not None or not wanted():
        return
    _port = _free_port()
    _process = _spawn(_port)
    atexit.register(stop)


def url() -> str | None:
    """The temporary server's API address, once :func:`start` started one."""
    return f"http://127.0.0.1:{_port}/api" if _process is not None else None


def stop() -> None:
    """Stop the temporary server (at exit, or when Prefect's settings name another server)."""
    global _process, _port, _settings, _adopted
    process, _process, _port, _adopted = _process, None, None, False
    os.environ.pop(TEMPORARY, None)
    if _settings is not None:
        settings, _settings = _settings, None
        with contextlib.suppress(Exception):  # at exit, Prefect may have torn its contexts down already
            settings.close()
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait(timeout: float) -> None:
    """Wait until the temporary server answers; on a port taken meanwhile, start it on another.
    Raises a :class:`~segml.errors.SegmlError` saying why when it does not come up within ``timeout`` seconds."""
    global _process, _port
    if _process is None:
        return
    deadline = time.monotonic() + timeout
    attempts = 1
    while time.monotonic() < deadline:
        code = _process.poll()
        if code == STARTUP_FAILURE and attempts < ATTEMPTS:  # perhaps its port was taken meanwhile
            attempts += 1
            _port = _free_port()
            _process = _spawn(_port)
            _moved()
            continue
        if code is not None:
            stop()
            raise SegmlError(f"Prefect's temporary server did not start (exit code {code}, after {attempts} "
                               f"attempt{'s' if attempts > 1 else ''}; its own messages are above): check "
                               f"PREFECT_HOME ({os.environ.get('PREFECT_HOME', '~/.prefect')}), or start a server with "
                               f"`prefect server start` and set PREFECT_API_URL")
        if answers():
            return
        time.sleep(0.05)
    stop()
    raise SegmlError(f"Prefect's temporary server did not answer within {timeout:.0f} s; raise "
                       f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or start one with `prefect server start`")


def adopt() -> None:
    """Make the temporary server :func:`start` started this process's Prefect server, for the rest of
    the command (as Prefect's test harness does, through ``temporary_settings``), unless Prefect's own
    settings (a profile, ``prefect.toml``) name a server: that one is used and the temporary server is
    stopped. Flow runs of the command send no heartbeats unless Prefect's settings ask for them
    (:func:`_heartbeats_asked`). Call once Prefect is imported; :func:`ready` before the first flow."""
    global _settings, _adopted
    if _settings is not None:
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    updates = {}
    if _process is not None:
        if PREFECT_API_URL.value():
            stop()
        else:
            updates[PREFECT_API_URL] = url()
            _adopted = True
    # Heartbeats let a deployment's flow runs be marked crashed once they stop (an automation on the
    # server, Prefect's zombie detection); a command's own runs are not a deployment's, its temporary
    # server ends with it, and Prefect stops the heartbeat thread by joining it: up to a second at the
    # end of every flow run. segml finds a run whose process died itself (pipelines/publication.py).
    if _adopted or not _heartbeats_asked():
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    if updates:
        _settings = contextlib.ExitStack()
        _settings.enter_context(temporary_settings(updates=updates))
        atexit.register(stop)  # the settings are the command's: left when it ends (again, harmlessly)
    if _adopted:
        os.environ[TEMPORARY] = "1"


def _moved() -> None:
    """The adopted temporary server started again on another port: Prefect talks to it there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if _settings is not None and _adopted:
        _settings.enter_context(temporary_settings(updates={PREFECT_API_URL: url()}))


def _heartbeats_asked() -> bool:
    """Whether Prefect's settings (the environment, a profile, ``prefect.toml``) set the flow run
    heartbeat frequency rather than leave Prefect's default."""
    from prefect.settings import get_current_settings

    try:
        return "heartbeat_frequency" in get_current_settings().flows.model_fields_set
    except AttributeError:  # settings shaped otherwise: leave Prefect's choice alone
        return True


def answers() -> bool:
    """Whether the temporary server answers now."""
    try:
        with urllib.request.urlopen(f"{url()}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def ready(meanwhile=None) -> None:
    """Wait for the adopted temporary server (:func:`adopt`), within Prefect's start-up timeout;
    ``meanwhile`` (a function) is called first when the server does not answer yet."""
    if not _adopted:
        return
    if meanwhile is not None and not answers():
        meanwhile()
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    wait(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
