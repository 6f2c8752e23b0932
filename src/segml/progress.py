"""What a long-running command is doing now, for a progress line on the terminal.

Flows call :func:`step` before each step a user waits on; the command line
shows the latest step beside a spinner (``segml.cli``), and a program that
does not listen loses nothing: the steps are ordinary log records of the
``segml.progress`` logger at level INFO.
"""

from __future__ import annotations

import logging

log = logging.getLogger("segml.progress")


def step(text: str) -> None:
    """Announce the step that starts now (a short phrase: ``fitting kmeans for k = 2 to 8``)."""
    log.info(text)
