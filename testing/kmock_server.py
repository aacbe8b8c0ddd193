"""A kmock Kubernetes emulator in a background thread, for running the real kopf operator against it."""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import threading
import time
import uuid

from kmock import KubernetesEmulator, ResourceInfo, Server, action

RESOURCES = {
    "v1/namespaces": ResourceInfo(namespaced=False, kind="Namespace", singular="namespace",
                                  verbs={"list", "watch", "get"}),
    "v1/pods": ResourceInfo(namespaced=True, kind="Pod", singular="pod", verbs={"create", "list", "get"}),
    "v1/events": ResourceInfo(namespaced=True, kind="Event", singular="event",
                              verbs={"create", "list", "get", "patch"}),
    "v1/persistentvolumeclaims": ResourceInfo(namespaced=True, kind="PersistentVolumeClaim",
                                              singular="persistentvolumeclaim", verbs={"create", "list", "get"}),
    "events.k8s.io/v1/events": ResourceInfo(namespaced=True, kind="Event", singular="event",
                                            verbs={"create", "list", "get"}),
    "vita.training.dev/v1alpha1/vitatrainingruns": ResourceInfo(
        namespaced=True, kind="VitaTrainingRun", singular="vitatrainingrun", subresources={"status"},
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"}),
}
JOB_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
PYTORCHJOBS = ("kubeflow.org/v1/pytorchjobs", ResourceInfo(
    namespaced=True, kind="PyTorchJob", singular="pytorchjob", subresources={"status"}, verbs=JOB_VERBS))
TRAINJOBS = ("trainer.kubeflow.org/v1alpha1/trainjobs", ResourceInfo(
    namespaced=True, kind="TrainJob", singular="trainjob", subresources={"status"}, verbs=JOB_VERBS))


class ApiServerEmulator(KubernetesEmulator):
    """kmock plus what a real API server does: uid, creationTimestamp, resourceVersion and generateName on create,
    a new resourceVersion on every update, and label selectors on lists.

    kopf keys its per-object memory by metadata.uid: without uids every object shares one memory and
    handlers get other objects' bodies. `created_at` records when each object was created (monotonic
    seconds), for benchmarks that time the operator; `selected_lists` counts LISTs by (plural, label selector).
    """

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.created_at: dict[tuple[str, str, str], float] = {}
        self.selected_lists: collections.Counter[tuple[str, str]] = collections.Counter()
        self._versions = itertools.count(1)

    async def _handle(self, request):
        if request.action == action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:10]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp",
                            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta.setdefault("resourceVersion", str(next(self._versions)))
            self.created_at[(request.resource.plural, meta.get("namespace") or request.namespace or "",
                             meta["name"])] = time.monotonic()
        elif request.action == action.UPDATE and isinstance(request.data, dict):
            # Every change gets a new resourceVersion: kopf waits for the version its own patch returned
            # before it trusts the next event (persistence.consistency_timeout).
            request.data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)

    async def _serve_list(self, request):
        """Lists honour equality label selectors (`a=b,c!=d,e`), as the API server does."""
        result = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        self.selected_lists[(request.resource.plural, selector or "")] += 1  # "": a LIST of everything
        if selector:
            result["items"] = [o for o in result["items"] if _selected(o.get("metadata", {}).get("labels") or {},
                                                                       selector)]
        return result


def _selected(labels: dict, selector: str) -> bool:
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.strip() not in labels:
            return False
    return True


class KMockThread:
    """request_history: keep only the last N requests. kmock routes each request by scanning its whole
    history, which is quadratic under load; benchmarks bound it (N well above the requests in flight)."""

    def __init__(self, with_pytorchjobs: bool = True, request_history: int | None = None):
        self.with_pytorchjobs = with_pytorchjobs  # TrainJobs are always served
        self.request_history = request_history
        self.ready = threading.Event()
        self.stopping = None
        self.url = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        async with ApiServerEmulator() as kmock, Server(kmock) as server:
            if self.request_history:
                kmock._requests = collections.deque(maxlen=self.request_history)
            for key, info in RESOURCES.items():
                kmock.resources[key] = info
            if self.with_pytorchjobs:
                kmock.resources[PYTORCHJOBS[0]] = PYTORCHJOBS[1]
            kmock.resources[TRAINJOBS[0]] = TRAINJOBS[1]
            from testing.operator_scenarios import CLAIMS
            for pvc in CLAIMS:  # the scenarios' run mounts these
                kmock.objects["v1/persistentvolumeclaims", pvc["metadata"]["namespace"], pvc["metadata"]["name"]] = pvc
            self.kmock = kmock
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "kmock did not start"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)
