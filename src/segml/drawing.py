"""Rendering a run's figures and PDF report in a process of its own, on another core.

Drawing (the PNG figures and the report's pages) costs a few seconds of pure
Python whatever the number of customers, and a thread of the flow's process
shares the interpreter lock with everything else the flow does meanwhile
(logging the model, writing the tables). :func:`start` spawns one worker
process early, which imports matplotlib and the report's modules while the
flow reads and fits; :func:`render` then hands it the report's finished pages
(matplotlib figures pickle), and the flow's process writes the tables and
draws the PNG figures meanwhile: the two halves cost about the same. A fresh
process started only when the drawing is due costs more than it saves (6.1 s
against 2.3 s in a thread, on the Online Retail sample); started early, its
start-up is hidden behind the fit.

When no worker can be had (a platform without processes, a worker that died,
a figure that does not pickle) the figures are drawn in a thread of this
process, as before: the files are the same either way.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import pickle
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from segml.children import die_with_parent

log = logging.getLogger(__name__)

#: Set to ``0`` to draw in a thread of the flow's process instead of a worker process.
ENV = "SEGML_DRAWING_PROCESS"

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_warming: Future | None = None
_distributions: Future | None = None


def _start_worker() -> None:
    """The worker's initializer: it ends with this process, and at its own end skips tearing down
    the modules it imported (matplotlib, pandas), which the command would otherwise wait for."""
    import atexit

    die_with_parent()
    # Exit handlers run when the worker's interpreter exits, after multiprocessing has cleaned up;
    # this one ends the process there (handlers registered before it, such as logging's, are
    # skipped: the worker has nothing left to flush).
    atexit.register(os._exit, 0)


def _warm() -> int:
    """Run in the worker when it starts: import what drawing needs, so the first drawing finds it loaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.backends.backend_pdf  # noqa: F401

    import segml.plots  # noqa: F401
    import segml.report  # noqa: F401
    return os.getpid()


def _installed_distributions() -> dict[str, list[str]]:
    """Run in the worker: every importable top-level module with the distributions that install it
    (what MLflow maps a model's requirements with before it checks them, :func:`distributions`)."""
    try:
        import importlib_metadata as metadata  # the one MLflow reads
    except ImportError:
        import importlib.metadata as metadata
    return metadata.packages_distributions()


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def start() -> None:
    """Start the drawing worker now (it then imports while the caller works); safe to call again."""
    global _pool, _warming, _distributions
    if not enabled():
        return
    with _lock:
        if _pool is not None:
            return
        try:
            # spawn: a clean interpreter, never a fork of a process that runs Prefect's and MLflow's threads;
            # the worker ends with this process (left waiting for drawings that never come, it would keep
            # multiprocessing's resource tracker alive with it).
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker)
            _warming = _pool.submit(_warm)
            _distributions = _pool.submit(_installed_distributions)
            atexit.register(stop)
        except (OSError, RuntimeError, NotImplementedError) as exc:  # no processes here: draw in a thread
            log.debug("no drawing worker (%s): drawing in a thread", exc)
            _pool = None


def stop() -> None:
    """Stop the drawing worker (the next :func:`start` makes a new one)."""
    global _pool, _warming, _distributions
    with _lock:
        pool, _pool, _warming, _distributions = _pool, None, None, None
    if pool is None:
        return
    pool.shutdown(wait=True, cancel_futures=True)
    # multiprocessing's resource tracker, a process of its own started with the first spawned worker,
    # would otherwise outlive this process (and stay a zombie where nothing reaps orphans).
    from multiprocessing import resource_tracker

    stop_tracker = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if stop_tracker is not None:
        try:
            stop_tracker()
        except Exception:  # noqa: BLE001 - not this process's to stop, or gone already
            pass


def draw(folder: Path, figures: dict, pages: list | None, footer: str) -> tuple[dict[str, Path], Path | None]:
    """Every figure as ``folder/plots/<name>.png`` and, with ``pages``, the PDF report
    ``folder/segment_report.pdf``; returns the figures' paths by name and the report's path."""
    from segml.outputs import save_figures

    drawn = save_figures(folder / "plots", figures)  # before the report lays the same figures out as pages
    return drawn, write_pdf(folder, pages, footer)


def write_pdf(folder: Path, pages: list | None, footer: str) -> Path | None:
    from segml.report import write_report

    return write_report(folder / "segment_report.pdf", pages, footer) if pages is not None else None


def _pdf_pickled(payload: bytes) -> tuple[Path | None, int]:
    return write_pdf(*pickle.loads(payload)), os.getpid()


def distributions() -> dict[str, list[str]] | None:
    """The installed distributions by top-level module, as the worker found them when it started
    (None without a worker). Mapping them costs a few tenths of a second that MLflow would
    otherwise spend in the flow's process, at every model it logs."""
    future = _distributions
    try:
        return future.result(timeout=30) if future is not None else None
    except Exception:  # noqa: BLE001 - MLflow then maps them itself
        return None


def has_worker() -> bool:
    """Whether drawings go to the worker process (else they are drawn in a thread of this process)."""
    return _pool is not None


def worker_pid() -> int | None:
    """The drawing worker's process id once it has started (None without a worker)."""
    future = _warming
    try:
        return future.result(timeout=120) if future is not None else None
    except Exception:  # noqa: BLE001 - a worker that never came up is no worker
        return None


class Drawing:
    """A drawing under way. With the worker, the report's pages are drawn there while the PNG figures
    are drawn here (in :meth:`result`, after the caller's own work): the two halves cost about the
    same. Without it, everything is drawn in a thread of this process. :meth:`result` waits for the
    drawing, drawing the report here if the worker fails."""

    def __init__(self, folder: Path, figures: dict, pages: list | None, footer: str) -> None:
        self.folder, self.figures, self.pages, self.footer = folder, figures, pages, footer
        #: The id of the process that drew the report (this one, or the worker's), once drawn.
        self.report_pid: int | None = None
        self._report: Future | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._all: Future | None = None
        pool = _pool
        if pool is not None and pages is not None:
            try:
                # Pickled here, not in the pool's feeder thread, so a page that does not pickle shows now.
                payload = pickle.dumps((folder, pages, footer), protocol=pickle.HIGHEST_PROTOCOL)
                self._report = pool.submit(_pdf_pickled, payload)
                return
            except (pickle.PicklingError, TypeError, AttributeError, BrokenProcessPool, RuntimeError) as exc:
                log.debug("drawing in a thread: the worker cannot take this report (%r)", exc)
                if isinstance(exc, (BrokenProcessPool, RuntimeError)):
                    stop()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="segml-draw")
        self._all = self._thread.submit(draw, folder, figures, pages, footer)

    def abandon(self) -> None:
        """Wait for this drawing to end and drop what it drew: a drawing started afterwards into the
        same folder then writes every file last (the files are written atomically, each replacing
        the one before)."""
        for future in (self._report, self._all):
            if future is not None:
                try:
                    future.result()
                except Exception:  # noqa: BLE001 - dropped either way; the next drawing says what fails
                    pass
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    def result(self) -> tuple[dict[str, Path], Path | None]:
        if self._all is not None:
            try:
                self.report_pid = os.getpid()
                return self._all.result()
            finally:
                self._thread.shutdown(wait=False)
        from segml.outputs import save_figures

        try:
            drawn = save_figures(self.folder / "plots", self.figures)
        except BaseException:
            self.abandon()  # the report ends before the caller removes its folder
            raise
        try:
            report, self.report_pid = self._report.result()
            return drawn, report
        except BrokenProcessPool:  # the worker died (killed, out of memory): draw the report here instead
            log.warning("the drawing process stopped; drawing the report in this process")
            stop()
            self.report_pid = os.getpid()
            return drawn, write_pdf(self.folder, self.pages, self.footer)


def render(folder: Path, figures: dict, pages: list | None = None, footer: str = "") -> Drawing:
    """Start drawing ``figures`` and ``pages`` into ``folder``: in the worker process when
    :func:`start` made one, else in a thread of this process."""
    return Drawing(folder, figures, pages, footer)
