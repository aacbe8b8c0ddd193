"""The operator's settings, from its environment (the chart sets them): read in one place."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..jobs.backend import JobBackend
from ..jobs import fabric as fabric_profiles
from ..jobs import network_policy
from ..jobs.backends import RUNTIME_ENV, configured_backends, job_backends
from ..jobs.pods import PLATFORM_UID, TRAINER_UID
from ..jobs.trainjob import DEFAULT_RUNTIME

API_URL_ENV = "VITA_OPERATOR_API_URL"   # tests point the operator at their own API server
# The namespaces to watch, comma-separated (as __main__ passes them to kopf); unset: all namespaces.
NAMESPACE_ENV = "VITA_OPERATOR_NAMESPACE"
RESYNC_ENV = "VITA_OPERATOR_RESYNC_SECONDS"
WORKERS_ENV = "VITA_OPERATOR_WORKERS"  # reconciles at once
# How often the progress loop looks for runs due a read (each run is read every spec.progressIntervalSeconds).
PROGRESS_TICK_ENV = "VITA_OPERATOR_PROGRESS_TICK_SECONDS"
METRICS_PORT_ENV = "VITA_OPERATOR_METRICS_PORT"
RUN_TTL_ENV = "VITA_OPERATOR_RUN_TTL_SECONDS"  # finished runs are deleted this long after (spec's own wins)
STARTUP_TIMEOUT_ENV = "VITA_OPERATOR_STARTUP_TIMEOUT_SECONDS"  # a job's pods must all start within this
RETRY_BACKOFF_ENV = "VITA_OPERATOR_RETRY_BACKOFF_SECONDS"  # the first retry's delay after a stage's own failure
TRAINER_UID_ENV = "VITA_OPERATOR_TRAINER_UID"  # a UID, or "platform" (the chart's trainerPods.runAsUser)


@dataclass(frozen=True)
class Settings:
    api_url: str | None
    namespaces: tuple[str, ...] | None   # None: every namespace
    resync_seconds: float
    progress_tick_seconds: float
    # Reconciles are mostly waiting on the API server: Python's default pool (cpus + 4 threads) would serialise a
    # burst of stage transitions behind a handful of them.
    workers: int
    metrics_port: int
    run_ttl_seconds: int | None
    retry_backoff_seconds: int
    startup_timeout_seconds: int | None
    backends: dict[str, JobBackend]   # every backend by name (the TrainJob one with its runtime)
    enabled: list[str]                # the ones this operator runs, watches and is granted RBAC for
    default_backend: str
    # Each run's NetworkPolicies (jobs/network_policy.py): who scrapes trainers, more egress; None: none created.
    trainer_network_policy: dict[str, Any] | None = None
    # The trainer pods' UID (runAsUser, runAsGroup, fsGroup); None: the platform assigns one (OpenShift).
    trainer_uid: int | None = TRAINER_UID
    # The platform's network profiles (jobs/fabric.py), from the chart's fabric values.
    fabric: fabric_profiles.FabricSettings = dataclasses.field(default_factory=fabric_profiles.FabricSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        enabled, default_backend = configured_backends(env)
        return cls(backends=job_backends(env.get(RUNTIME_ENV) or DEFAULT_RUNTIME), enabled=enabled,
                   default_backend=default_backend,
                   api_url=env.get(API_URL_ENV) or None, namespaces=watched_namespaces(env.get(NAMESPACE_ENV)),
                   resync_seconds=float(env.get(RESYNC_ENV, "60")),
                   progress_tick_seconds=float(env.get(PROGRESS_TICK_ENV, "10")),
                   workers=int(env.get(WORKERS_ENV, "32")), metrics_port=int(env.get(METRICS_PORT_ENV, "9090")),
                   run_ttl_seconds=int(env[RUN_TTL_ENV]) if env.get(RUN_TTL_ENV) else None,
                   retry_backoff_seconds=int(env.get(RETRY_BACKOFF_ENV) or 0),
                   startup_timeout_seconds=int(env[STARTUP_TIMEOUT_ENV]) if env.get(STARTUP_TIMEOUT_ENV) else None,
                   trainer_network_policy=network_policy.settings_from_env(env.get(network_policy.ENV)),
                   trainer_uid=trainer_uid(env.get(TRAINER_UID_ENV)),
                   fabric=fabric_profiles.settings_from_env(env.get(fabric_profiles.ENV)))


def watched_namespaces(value: str | None) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in (value or "").split(",") if n.strip())
    return names or None


def trainer_uid(value: str | None) -> int | None:
    if not value:
        return TRAINER_UID
    if value == PLATFORM_UID:
        return None
    if not value.isdigit() or int(value) == 0:
        raise SystemExit(f"{TRAINER_UID_ENV}={value!r}: a non-root UID, or {PLATFORM_UID!r} where the platform "
                         f"assigns them (chart value trainerPods.runAsUser: null)")
    return int(value)


_settings: list[Settings] = []


def settings() -> Settings:
    """The settings read at startup (handlers.startup), or now if the operator has not started (a bare call)."""
    if not _settings:
        load()
    return _settings[0]


def load() -> Settings:
    _settings[:] = [Settings.from_env()]
    return _settings[0]
