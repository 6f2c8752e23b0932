"""Processes a command starts (Prefect's temporary server, the drawing worker) end with it."""

from __future__ import annotations

import os
import sys


def die_with_parent() -> None:
    """Have the kernel end this process when its parent dies, however the parent dies (killed, a
    signal without exit handlers), on Linux; nothing elsewhere. Call it first in a child process."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the signal was set
        os._exit(0)


#: ``python -P -c LAUNCHER command...``: a child that dies with its parent and then becomes ``command``
#: (``-P``: the working directory is not a place to import segml from).
LAUNCHER = "import os, sys; from segml.children import die_with_parent; die_with_parent(); os.execv(sys.argv[1], sys.argv[1:])"
