"""The operator's Kubernetes I/O: one API client for every thread, and the reads and writes that the handlers and
the operator's loops share. Nothing here decides anything."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from vita_api.spec import API_GROUP, KIND

from ..crd import PLURAL, VERSION

log = logging.getLogger(__name__)
_client: client.ApiClient | None = None   # one connection pool for all handler threads, built at startup


def connect(url: str | None, pool_size: int) -> None:
    """The client: `url` (tests point the operator at their own API server), else in-cluster, else kubeconfig."""
    global _client
    if url:
        client.Configuration.set_default(client.Configuration(host=url))
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    # Handlers run in kopf's thread pool; size the pool so threads don't queue for connections.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, pool_size)
    _client = client.ApiClient(cfg)


def _api_client() -> client.ApiClient:
    if _client is None:
        raise RuntimeError("the Kubernetes client is built by the startup handler (kube.connect)")
    return _client


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api_client())


def core() -> client.CoreV1Api:
    return client.CoreV1Api(_api_client())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(_api_client())


def group_version(api_version: str) -> tuple[str, str]:
    group, version = api_version.split("/")
    return group, version


def _raw_items(response: Any) -> list[dict[str, Any]]:
    """A LIST read with _preload_content=False: plain JSON, not the client's models (only a few fields matter)."""
    return cast(list[dict[str, Any]], json.loads(response.data).get("items") or [])


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Best effort: a failed read is logged and gives no pods; it never blocks the run."""
    try:
        raw = core().list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    except ApiException as e:
        if e.status not in (403, 404):  # 403: RBAC without pods; 404: no such resource
            log.warning("pods %s in %s not read: API error %s", selector, namespace, e.status)
        return []
    return _raw_items(raw)


def claim(namespace: str, name: str) -> dict[str, Any] | None:
    """A PersistentVolumeClaim as plain JSON; None when it does not exist."""
    try:
        raw: Any = core().read_namespaced_persistent_volume_claim(name, namespace, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(dict[str, Any], json.loads(raw.data))


_workload_version: dict[str, Any] = {}
REDISCOVER_SECONDS = 300.0  # Kueue installed (or upgraded) after the operator started is found this long after


def _served_workload_version() -> str | None:
    """Discovered once in a while: Kueue deprecates v1beta1 for v1beta2, and a cluster serves one or both."""
    from ..core.kueue import KUEUE_GROUP, workload_version
    if time.monotonic() - _workload_version.get("at", -REDISCOVER_SECONDS) >= REDISCOVER_SECONDS:
        try:
            groups = client.ApisApi(_api_client()).get_api_versions().groups or []
        except ApiException as e:
            log.warning("API discovery failed (API error %s): Kueue's Workloads not read", e.status)
            return None
        served = [v.version for g in groups if g.name == KUEUE_GROUP for v in g.versions or []]
        _workload_version.update(at=time.monotonic(), version=workload_version(served))
    return cast(str | None, _workload_version["version"])


def workloads(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Kueue's Workloads, through the newest version the cluster serves; [] where Kueue is not installed or not
    readable (best effort)."""
    from ..core.kueue import KUEUE_GROUP, WORKLOADS
    version = _served_workload_version()
    if version is None:
        return []
    try:
        found = custom().list_namespaced_custom_object(KUEUE_GROUP, version, namespace, WORKLOADS,
                                                       label_selector=selector)
    except ApiException as e:
        if e.status not in (403, 404):
            log.warning("workloads in %s not read: API error %s", namespace, e.status)
        return []
    return cast(list[dict[str, Any]], cast(dict[str, Any], found)["items"])


def node(name: str) -> dict[str, Any] | None:
    """A node; None if it does not exist. A node the operator may not read raises (the caller knows nothing)."""
    try:
        raw: Any = core().read_node(name, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return cast(dict[str, Any], json.loads(raw.data))


def warning_events(namespace: str) -> list[dict[str, Any]]:
    """The namespace's Warning events (what controllers say when they cannot create pods). Best effort."""
    try:
        raw = core().list_namespaced_event(namespace, field_selector="type=Warning", _preload_content=False)
    except ApiException as e:
        log.warning("events in %s not read: API error %s", namespace, e.status)
        return []
    return _raw_items(raw)


def batch_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    return _raw_items(batch().list_namespaced_job(namespace, label_selector=selector, _preload_content=False))


def custom_objects(api_version: str, plural: str, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Raises ApiException 404 when the kind's CRD is not installed."""
    found = custom().list_namespaced_custom_object(*group_version(api_version), namespace, plural,
                                                   label_selector=selector)
    return cast(list[dict[str, Any]], cast(dict[str, Any], found)["items"])


def create_batch_job(namespace: str, body: dict[str, Any]) -> None:
    custom_body: Any = body  # the client sends a plain manifest as it is
    batch().create_namespaced_job(namespace, custom_body)


def create_network_policy(namespace: str, body: dict[str, Any]) -> None:
    policy: Any = body
    client.NetworkingV1Api(_api_client()).create_namespaced_network_policy(namespace, policy)


def create_custom(api_version: str, plural: str, namespace: str, body: dict[str, Any]) -> None:
    custom().create_namespaced_custom_object(*group_version(api_version), namespace, plural, body)


def patch_custom(api_version: str, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
    custom().patch_namespaced_custom_object(*group_version(api_version), namespace, plural, name, patch)


def delete_custom(api_version: str, plural: str, namespace: str, name: str) -> None:
    """Deletes its pods too (in the background); one already gone is fine."""
    try:
        custom().delete_namespaced_custom_object(*group_version(api_version), namespace, plural, name,
                                                 propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


def get_run(namespace: str, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], custom().get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name))


def delete_run(namespace: str, name: str) -> None:
    """Background propagation: the garbage collector removes its jobs (owner references) after it."""
    try:
        custom().delete_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name,
                                                 propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            raise


def list_runs(namespace: str | None) -> list[dict[str, Any]]:
    """Every run in `namespace`, or in the cluster when it is None."""
    found = (custom().list_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL) if namespace
             else custom().list_cluster_custom_object(API_GROUP, VERSION, PLURAL))
    return cast(list[dict[str, Any]], cast(dict[str, Any], found)["items"])


def patch_status(namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None) -> str | None:
    """A merge patch of the run's status (null removes a field). With `resource_version`, the API server refuses
    (409) a status computed from an older copy of the run. Returns the run's new resourceVersion."""
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    written = custom().patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, name, body)
    version = cast(dict[str, Any], written or {}).get("metadata", {}).get("resourceVersion")
    return str(version) if version else None


def emit_event(run: dict[str, Any], etype: str, reason: str, message: str) -> None:
    """A core/v1 Event on the run (`kubectl describe` shows it). Written directly, not with kopf.info: that only
    works inside kopf's per-object tasks, and the resync loop reconciles from its own thread. Best effort.

    The same event again (same run, type, reason and message) is counted on the first one (count, lastTimestamp:
    "x3 over 10m"), as client-go's event correlator does: its name is derived from what it says, so an operator
    restart finds it too, until the API server's event TTL removes it."""
    meta = run["metadata"]
    now = datetime.now(timezone.utc)
    message = message[:1024]
    digest = hashlib.sha256("\0".join((meta.get("uid") or "", etype, reason, message)).encode()).hexdigest()[:16]
    name = f"{meta['name']}.{digest}"
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=name, namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(api_version=run.get("apiVersion", f"{API_GROUP}/{VERSION}"),
                                                 kind=run.get("kind", KIND), name=meta["name"],
                                                 namespace=meta["namespace"], uid=meta.get("uid")),
        type=etype, reason=reason, message=message, count=1, first_timestamp=now, last_timestamp=now,
        source=client.V1EventSource(component="vita-operator"), reporting_component="vita-operator",
        reporting_instance=os.environ.get("HOSTNAME", "vita-operator"))
    try:
        try:
            core().create_namespaced_event(meta["namespace"], event)
        except ApiException as e:
            if e.status != 409:
                raise
            seen = core().read_namespaced_event(name, meta["namespace"])
            core().patch_namespaced_event(name, meta["namespace"], {
                "count": (seen.count or 1) + 1, "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")})
    except ApiException as e:
        log.warning("event %s on %s/%s not written: API error %s", reason, meta["namespace"], meta["name"], e.status)
