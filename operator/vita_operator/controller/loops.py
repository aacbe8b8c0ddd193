"""The operator's own threads: the resync (a safety net for missed events), the progress reads and the job watches."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from . import metrics
from .config import settings
from .observe import all_runs
from .progress_loop import progress_pass
from .reconcile import reconcile

log = logging.getLogger(__name__)


def resync_all(logger: logging.Logger = log, stop: threading.Event | None = None) -> int:
    """Safety net for missed job events: one reconcile of every run. Returns how many runs it saw.

    A loop of the operator's own, not a kopf timer: per-object timers make kopf put a finalizer on every run,
    and with the operator down or uninstalled `kubectl delete` of a run (or of the CRD) would then hang."""
    runs = all_runs()
    for run in runs:
        if stop is not None and stop.is_set():
            break
        if run.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            reconcile(run, logger)
        except Exception:  # one bad run must not stop the others; the next pass retries it
            metrics.RECONCILE_ERRORS.labels("resync").inc()
            logger.exception("resync of %s/%s failed", run["metadata"].get("namespace"), run["metadata"]["name"])
    return len(runs)


OnePass = Callable[..., int]


def _loop(stop: threading.Event, interval: float, one_pass: OnePass, what: str) -> None:
    """The operator's own periodic loops (resync, progress): one pass every `interval` until stopped."""
    while not stop.wait(interval):
        try:
            one_pass(stop=stop)
        except Exception:  # API down: try again next interval
            log.exception("%s failed", what)


# The running loops, (stop, thread) each: one Event per start, and cleanup waits for them, so a loop never outlives
# its operator.
_loops: list[tuple[threading.Event, threading.Thread, Callable[[], None]]] = []


def start_loop(what: str, interval: float, one_pass: OnePass) -> None:
    start_thread(what, lambda stop: _loop(stop, interval, one_pass, what))


def start_thread(what: str, run: Callable[[threading.Event], None], wake: Callable[[], None] = lambda: None) -> None:
    """A thread of the operator's (a loop, a watch) that runs until stop_loops sets its Event (and calls `wake`,
    for a thread blocked in a read)."""
    stop = threading.Event()
    thread = threading.Thread(target=run, name=f"vita-{what}", daemon=True, args=(stop,))
    thread.start()
    _loops.append((stop, thread, wake))


def progress_all(logger: logging.Logger = log, stop: threading.Event | None = None) -> int:
    """One progress pass over every run (progress_loop.py); a run found hung is reconciled at once."""
    config = settings()
    return progress_pass(all_runs(),
                         lambda run: config.backends.get((run.get("status") or {}).get("backend")
                                                         or config.default_backend),
                         lambda run: reconcile(run, logger), logger, stop)


def stop_loops() -> None:
    for stop, _, wake in _loops:
        stop.set()
        wake()
    for _, thread, _ in _loops:
        thread.join(timeout=30)
    _loops.clear()
