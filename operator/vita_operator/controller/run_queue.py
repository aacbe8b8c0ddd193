"""Reconciles that job events ask for, at most one waiting per run (as controller-runtime's work queue): a job's
status written several times in a burst costs its run one reconcile, not one per event, and a reconcile that
starts after the last event sees them all."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor

from .cache import Key

log = logging.getLogger(__name__)


class RunQueue:
    def __init__(self, executor: Executor, work: Callable[[Key], None]) -> None:
        self._executor, self._work = executor, work
        self._lock = threading.Lock()
        self._waiting: set[Key] = set()

    def add(self, key: Key) -> None:
        with self._lock:
            if key in self._waiting:
                return
            self._waiting.add(key)
        self._executor.submit(self._run, key)

    def _run(self, key: Key) -> None:
        with self._lock:  # from here on, a new event queues another reconcile: this one may have read too early
            self._waiting.discard(key)
        try:
            self._work(key)
        except Exception:  # the resync loop retries it
            log.exception("reconcile of %s/%s after a job event failed", *key)
