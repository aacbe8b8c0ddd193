"""Watch one kind of job the way client-go's informers do: a paged LIST, then a WATCH from the list's
resourceVersion (bookmarks keep it current), a fresh LIST when the watch expires (410 Gone) or breaks. Each object is
slimmed as it arrives and kept in a cache.Store; every change after the listing is handed to `on_change`.

The operator's own, not kopf's watch: kopf keeps every listed object's whole body (with a task per object) while it
works through a listing, and a PyTorchJob with its pod templates is tens of KiB as Python objects, so 10,000 jobs
of finished runs cost the operator 670 MiB at startup. A page at a time, only the slim copies stay."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from vita_api.naming import LABEL_RUN

from . import kube
from .cache import Key, Store

log = logging.getLogger(__name__)
WATCH_SECONDS = 300  # the API server ends each watch after this; the next one resumes from its resourceVersion
PAGE = 250


@dataclass(frozen=True)
class JobWatch:
    group: str
    version: str
    plural: str
    label_selector: str
    namespace: str | None                        # None: every namespace
    store: Store | None                          # the cache it keeps; None: only its events matter
    slim: Callable[[dict[str, Any]], dict[str, Any]]
    on_change: Callable[[Key], None]             # the run of a job that changed after the listing

    @property
    def what(self) -> str:
        return f"{self.plural}.{self.group}"


def run_key(obj: dict[str, Any]) -> Key | None:
    meta = obj.get("metadata") or {}
    run = (meta.get("labels") or {}).get(LABEL_RUN)
    return (str(meta.get("namespace", "")), run) if run else None


def _call(w: JobWatch) -> Callable[..., Any]:
    api = kube.custom()  # /apis/{group}/{version}/{plural} also serves built-in groups (batch/v1 jobs) as JSON
    if namespace := w.namespace:
        return lambda **kw: api.list_namespaced_custom_object(w.group, w.version, namespace, w.plural, **kw)
    return lambda **kw: api.list_cluster_custom_object(w.group, w.version, w.plural, **kw)


def list_all(w: JobWatch) -> str:
    """Every object, a page at a time, into the store (replacing what it held: objects deleted while no watch ran
    leave it); the list's resourceVersion. A watch without a store needs only that version: one object is listed."""
    call, found, token = _call(w), [], None
    while True:
        page = json.loads(call(label_selector=w.label_selector, limit=PAGE if w.store is not None else 1,
                               _continue=token, _preload_content=False).data)
        found += [(run_key(obj), w.slim(obj)) for obj in page.get("items") or []]
        token = (page.get("metadata") or {}).get("continue")
        if w.store is None or not token:
            if w.store is not None:
                w.store.replace(found, w.namespace)
            return str((page.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """LIST then WATCH one kind of job until stopped. API errors are logged and retried after a pause (reconciles
    LIST a run's jobs meanwhile: the store is empty until the first listing is complete)."""

    def __init__(self, w: JobWatch) -> None:
        self.w = w
        self._stream: watch.Watch | None = None

    def run(self, stop: threading.Event) -> None:
        rv: str | None = None
        while not stop.is_set():
            try:
                if rv is None:
                    rv = list_all(self.w)
                rv = self._watch_from(rv, stop)
            except ApiException as e:
                rv = None  # 410: too old, list again; anything else: list again after a pause
                if e.status == 404:  # the backend's CRD is not installed (the run shows it); look again later
                    log.info("%s not served (404); watching again in 60 s", self.w.what)
                    stop.wait(60)
                elif e.status != 410:
                    log.warning("watch of %s failed (API error %s); retrying in 5 s", self.w.what, e.status)
                    stop.wait(5)
            except Exception:  # a broken connection, or close() below
                if not stop.is_set():
                    log.warning("watch of %s broke; listing again in 5 s", self.w.what, exc_info=True)
                    rv = None
                    stop.wait(5)

    def close(self) -> None:
        """End the watch now (its read blocks until the next event otherwise): shutting its socket down makes
        run()'s read end, and run() sees its stop event set. (Closing the response would wait for the reader.)"""
        resp = getattr(self._stream, "_resp", None)
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def _watch_from(self, resource_version: str, stop: threading.Event) -> str:
        """One watch, until the API server ends it or `stop`; the last resourceVersion seen."""
        w = self.w
        self._stream = stream = watch.Watch()  # type: ignore[no-untyped-call]
        events = stream.stream(  # type: ignore[no-untyped-call]
            _call(w), label_selector=w.label_selector, resource_version=resource_version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _request_timeout=(10, WATCH_SECONDS + 30))
        for event in events:
            if stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]
                break
            kind, obj = event["type"], event["raw_object"]
            if kind == "BOOKMARK":
                continue
            key = run_key(obj)
            if w.store is not None:
                w.store.apply(kind, key, w.slim(obj))
            if key is not None:
                w.on_change(key)
        return stream.resource_version or resource_version
