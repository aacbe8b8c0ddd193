"""One active operator among replicas: a coordination.k8s.io Lease, as controller-runtime's leader election.

kopf's own peering pauses kopf's handlers but not the operator's resync and progress threads, so the process
itself waits for the lease before it starts kopf, renews it while it runs, and exits if it loses it (its pod then
restarts as a standby). A standby serves /healthz so that its liveness probe passes while it waits.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading

log = logging.getLogger(__name__)
LEADER_ELECTION_ENV = "VITA_OPERATOR_LEADER_ELECTION"   # "true": wait for the Lease before operating
LEASE_NAMESPACE_ENV = "VITA_OPERATOR_POD_NAMESPACE"     # where the Lease lives (the operator's namespace)
LEASE_NAME = "vita-operator"
LEASE_SECONDS_ENV = "VITA_OPERATOR_LEASE_SECONDS"       # lease duration: a dead leader's replica waits this long


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _standby_health(port: int) -> http.server.HTTPServer | None:
    try:
        server = http.server.HTTPServer(("0.0.0.0", port), _Health)
    except OSError:
        return None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def become_leader(identity: str, health_port: int | None) -> None:
    """Block until this process holds the Lease, then keep renewing it in a thread; exit the process the moment
    it is lost (a partitioned leader must not go on writing)."""
    from kubernetes import config
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    seconds = int(os.environ.get(LEASE_SECONDS_ENV, "15"))
    namespace = os.environ[LEASE_NAMESPACE_ENV]
    lock = LeaseLock(LEASE_NAME, namespace, identity)  # type: ignore[no-untyped-call]
    election = leaderelection.LeaderElection(electionconfig.Config(  # type: ignore[no-untyped-call]
        lock, lease_duration=seconds, renew_deadline=max(2, seconds * 2 // 3), retry_period=1,
        onstarted_leading=lambda: None, onstopped_leading=None))
    health = _standby_health(health_port) if health_port else None
    log.info("waiting for the Lease %s/%s as %s", namespace, LEASE_NAME, identity)
    election.acquire()  # type: ignore[no-untyped-call]
    if health is not None:
        health.shutdown()
        health.server_close()
    log.info("leading as %s", identity)

    def renew() -> None:
        election.renew_loop()  # type: ignore[no-untyped-call]
        log.error("lost the Lease %s/%s: exiting, to restart as a standby", namespace, LEASE_NAME)
        os._exit(1)
    threading.Thread(target=renew, name="vita-lease", daemon=True).start()
