"""The operator's own cache of runs and jobs, fed by the watches (kopf's for runs, informer.py's for jobs) and read
by every reconcile, so that a reconcile reads its run's jobs from memory instead of LISTing them, and the loops walk
the runs without a LIST per pass.

Not kopf.index: kopf holds every handler until all its indices have seen every object, and its readiness check is
quadratic in their number (with 1,000 runs and 10,000 jobs no handler ran for minutes). This cache gates nothing: a
reconcile that finds no job for its run asks the API server instead (observe.observed_jobs).

It keeps only the fields the operator reads (the backends' index_fields, slim_run): 10,000 jobs of finished runs stay
in memory for as long as they exist."""

from __future__ import annotations

import threading
from typing import Any

from ..jobs.backend import index_metadata

Key = tuple[str, str]  # (namespace, run name)


class Store:
    """Objects grouped by the run they belong to, by name. Written from kopf's event loop, read from worker threads:
    every access holds the lock, and reads return copies of the lists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[Key, dict[str, dict[str, Any]]] = {}
        self._key_of: dict[tuple[str, str], Key] = {}  # (namespace, object name) -> its group

    def apply(self, event_type: str | None, key: Key | None, obj: dict[str, Any]) -> None:
        """One watch event (None: the initial listing; ADDED, MODIFIED, DELETED). `key` None: the object belongs
        to no run (its run label was removed), so it leaves the cache."""
        with self._lock:
            self._apply(self._groups, self._key_of, event_type, key, obj)

    def replace(self, objects: list[tuple[Key | None, dict[str, Any]]], namespace: str | None = None) -> None:
        """Everything at once, from a fresh LIST: objects deleted while nobody watched leave the cache too. With
        `namespace`, the LIST covered that namespace only (an operator watching several): the others' are kept."""
        groups: dict[Key, dict[str, dict[str, Any]]] = {}
        key_of: dict[tuple[str, str], Key] = {}
        for key, obj in objects:
            self._apply(groups, key_of, None, key, obj)
        with self._lock:
            if namespace is not None:
                groups.update({k: g for k, g in self._groups.items() if k[0] != namespace})
                key_of.update({i: k for i, k in self._key_of.items() if i[0] != namespace})
            self._groups, self._key_of = groups, key_of

    @staticmethod
    def _apply(groups: dict[Key, dict[str, dict[str, Any]]], key_of: dict[tuple[str, str], Key],
               event_type: str | None, key: Key | None, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ident = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        old = key_of.pop(ident, None)
        if old is not None:
            group = groups.get(old, {})
            group.pop(ident[1], None)
            if not group:
                groups.pop(old, None)
        if event_type != "DELETED" and key is not None:
            groups.setdefault(key, {})[ident[1]] = obj
            key_of[ident] = key

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self._key_of.clear()

    def group(self, key: Key) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._groups.get(key, {}).values())

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [obj for group in self._groups.values() for obj in group.values()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._key_of)


def slim_run(body: dict[str, Any]) -> dict[str, Any]:
    """A run as the loops read it: its spec and status, its metadata without managedFields or annotations."""
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": index_metadata(body),
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


# Every run, by (namespace, name); every enabled backend's jobs, by backend and (namespace, run label).
runs = Store()
jobs: dict[str, Store] = {}
# Set once the operator's watches feed the stores (handlers.startup); before that (a bare reconcile, a test) readers
# go to the API server.
fed = threading.Event()


def start_feeding() -> None:
    """Empty and mark fed: the watches that start now list every object again (an operator restarted in one process,
    as tests do, must not read the last one's objects)."""
    runs.clear()
    for store in jobs.values():
        store.clear()
    fed.set()


def stop_feeding() -> None:
    fed.clear()


def job_store(backend_name: str) -> Store:
    return jobs.setdefault(backend_name, Store())


def run_in_cache(namespace: str, name: str) -> dict[str, Any] | None:
    found = runs.group((namespace, name)) if fed.is_set() else []
    return found[0] if found else None
