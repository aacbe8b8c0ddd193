"""The pod pieces every job shares (containers, env, volumes, placement, security) and the readers of what its pods
say (termination messages, why they cannot start). Pure functions of (run, stage, attempt) and of pod objects."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, cast

from vita_api.naming import job_labels, job_name
from vita_api.plan import FLIGHT_RECORDER_DIR, GPUS_ENV, cluster_roots, stage_output_dir, stage_resources
from vita_api.spec import API_GROUP, ResourcesOverride, VitaTrainingRunSpec
from vita_api.termination import eval_loss_of, fabric_of, final_loss_of, oom_of, permanent_failure_of

KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
# Kueue Topology-Aware Scheduling, on each pod template: the domain level, and (for a PyTorchJob's two pod sets,
# Master and Worker) the group that must share one domain.
KUEUE_TOPOLOGY = {"required": "kueue.x-k8s.io/podset-required-topology",
                  "preferred": "kueue.x-k8s.io/podset-preferred-topology"}
KUEUE_PODSET_GROUP = "kueue.x-k8s.io/podset-group-name"
TTL_AFTER_FINISHED = 7 * 24 * 3600
# Container states that do not heal by waiting alone: a wrong image or tag, a private registry without a pull
# Secret, a missing Secret/ConfigMap (envFromSecrets) or a bad container config.
STUCK_WAITING = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError")


def _secret_env(spec: VitaTrainingRunSpec) -> list[dict[str, Any]]:
    env = []
    for var, ref in sorted(spec.trainer.env_from_secrets.items()):
        secret, _, key = ref.partition("/")
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key or var}}})
    return env


TRAINER_UID = 1000          # the trainer image's user (images/trainer/Dockerfile)
CACHE_DIR = "/cache"        # HOME and the HF / Triton / torch-extension caches: writable under any UID
TRAINER_MODULE = ["-m", "vita_trainer.train"]


def job_metadata(run_name: str, namespace: str, spec: VitaTrainingRunSpec, index: int, attempt: int) -> dict[str, Any]:
    stage = spec.stages[index]
    labels = {**job_labels(run_name, stage.name, attempt), **kueue_labels(spec)}
    return {"name": job_name(run_name, stage.name, attempt), "namespace": namespace, "labels": labels,
            "annotations": {f"{API_GROUP}/output": stage_output_dir(spec, index, cluster_roots(spec))}}


def kueue_labels(spec: VitaTrainingRunSpec) -> dict[str, str]:
    """What Kueue reads on a job: its LocalQueue and its WorkloadPriorityClass."""
    out = {KUEUE_LABEL: spec.scheduling.kueue_queue} if spec.scheduling.kueue_queue else {}
    if spec.scheduling.kueue_queue and spec.scheduling.kueue_priority_class:
        out[KUEUE_PRIORITY_LABEL] = spec.scheduling.kueue_priority_class
    return out


def container_resources(spec: VitaTrainingRunSpec, index: int) -> dict[str, Any]:
    res = stage_resources(spec, index)
    limits = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus_per_node:
        limits["nvidia.com/gpu"] = str(res.gpus_per_node)
    limits.update(res.extra_resources)  # RDMA devices and the like: without them NCCL falls back to TCP
    return {"requests": dict(limits), "limits": limits}


def flight_recorder_prefix(spec: VitaTrainingRunSpec, index: int) -> str:
    """Where each rank's NCCL flight recorder dump goes when a collective times out: <stage output>/
    nccl-flight-recorder/rank_<N>, on the checkpoint volume (it outlives the pods)."""
    return f"{stage_output_dir(spec, index, cluster_roots(spec))}/{FLIGHT_RECORDER_DIR}/rank_"


def container_env(spec: VitaTrainingRunSpec, index: int) -> list[dict[str, Any]]:
    gpus = stage_resources(spec, index).gpus_per_node
    gpu_env = [{"name": GPUS_ENV, "value": str(gpus)}] if gpus else []
    # NCCL's async error handling: a collective that times out (--ddp_timeout) or a dead peer ends the process
    # instead of leaving the rank blocked, so the job fails and the stage is retried. The flight recorder keeps
    # each rank's last collectives and writes them when one times out: which rank stopped, and in which call.
    return _merged_env([{"name": "HF_HUB_OFFLINE", "value": "1"},
                        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
                        {"name": "TORCH_NCCL_TRACE_BUFFER_SIZE", "value": "2000"},
                        {"name": "TORCH_NCCL_DUMP_ON_TIMEOUT", "value": "1"},
                        {"name": "TORCH_NCCL_DEBUG_INFO_TEMP_FILE", "value": flight_recorder_prefix(spec, index)},
                        # Under an arbitrary UID (OpenShift) HOME is "/", and every cache below it fails to write.
                        {"name": "HOME", "value": CACHE_DIR},
                        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
                        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
                        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{CACHE_DIR}/torch_extensions"}, *gpu_env],
                       [{"name": k, "value": v} for k, v in sorted(spec.trainer.env.items())],
                       _secret_env(spec))


def container_security(spec: VitaTrainingRunSpec) -> dict[str, Any]:
    """PodSecurity "restricted"; IPC_LOCK only where the run asks for RDMA memory registration."""
    return {"allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]} if spec.trainer.ipc_lock else {})}}


# fsGroup: most CSI volumes are root-owned; without it the first checkpoint save is refused.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID, "fsGroup": TRAINER_UID,
                "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


PLATFORM_UID = "platform"  # the operator's setting when the platform assigns UIDs (OpenShift's restricted SCCs)


def with_trainer_uid(job: dict[str, Any], uid: int | None) -> dict[str, Any]:
    """The job with every pod's securityContext for the platform's choice: `uid` (the image's user by default), or,
    where the platform assigns UIDs (None; OpenShift refuses a pod that names one outside the namespace's range),
    no runAsUser, runAsGroup or fsGroup at all. Builders write POD_SECURITY; the operator applies its setting here."""
    if uid == TRAINER_UID:
        return job
    chosen = {**POD_SECURITY, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid} if uid is not None else \
        {k: v for k, v in POD_SECURITY.items() if k in ("runAsNonRoot", "seccompProfile")}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (dict(chosen) if k == "securityContext" and v == POD_SECURITY else walk(v))
                    for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node
    return cast(dict[str, Any], walk(job))


def volumes_and_mounts(spec: VitaTrainingRunSpec, index: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """/dev/shm sized per stage, the cache folder, and the run's dataset (read-only) and checkpoint volumes."""
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"},
                                    {"name": "cache", "mountPath": CACHE_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                             "sizeLimit": stage_resources(spec, index).shm_size}},
               {"name": "cache", "emptyDir": {}}]
    v = spec.volumes
    if v.dataset:
        mounts.append({"name": "dataset", "mountPath": v.dataset.mount_path, "readOnly": True})
        volumes.append({"name": "dataset", "persistentVolumeClaim": {"claimName": v.dataset.claim_name,
                                                                       "readOnly": True}})
    if v.checkpoints:
        mounts.append({"name": "checkpoints", "mountPath": v.checkpoints.mount_path})
        volumes.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": v.checkpoints.claim_name}})
    return volumes, mounts


def pod_placement(spec: VitaTrainingRunSpec, index: int) -> dict[str, Any]:
    """Pod spec fields for where and as whom the pods run (only the ones the run sets)."""
    res = stage_resources(spec, index)
    out: dict[str, Any] = {}
    if res.node_selector:
        out["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    if res.affinity:
        out["affinity"] = res.affinity
    if spec.trainer.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": name} for name in spec.trainer.image_pull_secrets]
    if spec.trainer.service_account_name:
        out["serviceAccountName"] = spec.trainer.service_account_name
    return out


def pod_identity(spec: VitaTrainingRunSpec) -> dict[str, Any]:
    """A trainer needs no API access: no ServiceAccount token is mounted, unless the run names a ServiceAccount (whose
    own automount setting then decides). Batch and PyTorchJob pods; a TrainJob's come from the chart's runtime."""
    return {} if spec.trainer.service_account_name else {"automountServiceAccountToken": False}


def image_pull_policy(image: str) -> str:
    """A digest names one build: pull it once per node. A tag can be re-pushed: every pod asks the registry, so a
    job's ranks on several nodes cannot run two builds of one tag from different node caches."""
    return "IfNotPresent" if "@sha256:" in image else "Always"


# A node autoscaler that drains a trainer pod's node kills the whole job (every rank restarts from a checkpoint).
NO_EVICTION = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "karpenter.sh/do-not-disrupt": "true"}


def pod_annotations(spec: VitaTrainingRunSpec) -> dict[str, Any]:
    port = spec.trainer.metrics_port
    topology = spec.scheduling.topology
    placement = {KUEUE_TOPOLOGY[topology.mode]: topology.level} if topology else {}
    return {**NO_EVICTION, **spec.trainer.pod_annotations, "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port), "prometheus.io/path": "/metrics", **placement}


def _merged_env(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per name, later groups winning (a user's NCCL_DEBUG or HOME replaces ours, in our place)."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        merged.update((e["name"], e) for e in group)
    return list(merged.values())


def trainer_container_state(pod: dict[str, Any], container: str) -> dict[str, Any]:
    """The named container's terminated state, or {} while it has none."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return (cs.get("state") or {}).get("terminated") or {}
    return {}


def permanent_failure_in(pod: dict[str, Any], container: str) -> str | None:
    """The trainer's own "retrying cannot help" from a failed container's termination message, if any."""
    term = trainer_container_state(pod, container)
    return permanent_failure_of(term.get("message", "")) if term.get("exitCode") else None


def oom_in(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    """What the trainer said when it ran out of GPU memory (the step and the batch it ran with), if it did."""
    term = trainer_container_state(pod, container)
    return oom_of(term.get("message", "")) if term.get("exitCode") else None


def result_message(pod: dict[str, Any], container: str) -> str:
    """The trainer container's termination message when it finished (exit 0): the stage's result; "" otherwise."""
    term = trainer_container_state(pod, container)
    return str(term.get("message", "")) if term.get("exitCode") == 0 else ""


def final_loss_in(pod: dict[str, Any], container: str) -> float | None:
    """finalLoss from the trainer container's termination message, if it finished and wrote one."""
    return final_loss_of(result_message(pod, container))


def fabric_in(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    """The stage's fabric probe (transport and bus bandwidth) from the same message, if it probed."""
    return fabric_of(result_message(pod, container))


def final_eval_loss_in(pod: dict[str, Any], container: str) -> float | None:
    """The stage's final validation loss (evalLoss) from the same message, if it had validation data."""
    return eval_loss_of(result_message(pod, container))


def true_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def active_since(job: dict[str, Any]) -> str | None:
    """When the job last became able to run: its creation, or the latest (re)admission (Suspended turned False,
    Running or Restarting turned True). A hang is counted from here, not from a step read before a suspension."""
    times = [(job.get("metadata") or {}).get("creationTimestamp")]
    for c in (job.get("status") or {}).get("conditions") or []:
        if (c.get("type") == "Suspended" and c.get("status") == "False") or \
                (c.get("type") in ("Running", "Restarting") and c.get("status") == "True"):
            times.append(c.get("lastTransitionTime"))
    found = [t for t in times if t]
    return max(found) if found else None  # RFC 3339 UTC times sort as strings


def condition_message(cond: dict[str, Any]) -> str:
    return f"{cond.get('reason', cond.get('type', ''))}: {cond.get('message', '')}".strip(": ")


def stuck_reason(pods: list[dict[str, Any]]) -> str:
    """Why a job's pods cannot start, from their status ("" when they can): the first stuck pod, named. Init
    containers count (the training operator injects `init-pytorch` into PyTorchJob workers: it pulls its own image
    and fails under PodSecurity "restricted")."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("name", "")):
        name, status = pod.get("metadata", {}).get("name", "?"), pod.get("status") or {}
        for cs in status.get("initContainerStatuses") or []:
            state = cs.get("state") or {}
            waiting, done = state.get("waiting") or {}, state.get("terminated") or {}
            if waiting.get("reason") in (*STUCK_WAITING, "CrashLoopBackOff"):
                return (f"pod {name}: init container {cs.get('name')}: {waiting['reason']}: "
                        f"{waiting.get('message', '')}").rstrip(": ")
            if done.get("exitCode"):
                return (f"pod {name}: init container {cs.get('name')} failed (exit {done['exitCode']}): "
                        f"{done.get('reason', '')} {done.get('message', '')}").rstrip(": ")
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                return f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and \
                    cond.get("reason") == "Unschedulable":
                return f"pod {name}: Unschedulable: {cond.get('message', '')}".rstrip(": ")
    return ""


# Reasons the job controllers give when they cannot create a job's pods (the training operator, batch/v1 Job).
FAILED_CREATE = ("FailedCreatePod", "FailedCreate")


def creation_failure(job_name: str, events: list[dict[str, Any]], pods: Sequence[dict[str, Any]] = ()) -> str:
    """Why a job lacks pods, from its controllers' Warning events (PodSecurity, a quota, a webhook): the newest
    event of the job itself or of a child object named after it (Trainer's JobSet Jobs), if it is newer than every
    pod the job has (a pod created since then answers an older refusal)."""
    def involved(e: dict[str, Any]) -> str:
        return str((e.get("involvedObject") or {}).get("name", ""))

    def when(e: dict[str, Any]) -> str:  # RFC 3339 UTC times sort as strings
        return str(e.get("lastTimestamp") or e.get("eventTime") or "")
    ours = [e for e in events if e.get("reason") in FAILED_CREATE and
            (involved(e) == job_name or involved(e).startswith(job_name + "-"))]
    if not ours:
        return ""
    newest = max(ours, key=when)
    if any(str((p.get("metadata") or {}).get("creationTimestamp") or "") > when(newest) for p in pods):
        return ""
    what = f"{len(pods)} pod(s) created, the rest refused" if pods else "no pods were created"
    return f"{what}: {newest.get('reason')}: {newest.get('message', '')}".rstrip(": ")


def disruption_of(pod: dict[str, Any]) -> str:
    """Why a pod was disrupted rather than failed ("" if it was not): its DisruptionTarget condition (a drain, a
    preemption, taint-based eviction of a NotReady or deleted node, pod garbage collection), else the kubelet's
    eviction reason."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return f"{cond.get('reason', 'DisruptionTarget')}: {cond.get('message', '')}".rstrip(": ")
    if status.get("reason") in ("Evicted", "NodeLost", "NodeShutdown", "Terminated", "Preempting"):
        return f"{status['reason']}: {status.get('message', '')}".rstrip(": ")
    return ""


def exited_with_error(pod: dict[str, Any]) -> bool:
    """A container of the pod ended with a non-zero exit code: the pod failed by itself."""
    return any(((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def failed_node(pod: dict[str, Any]) -> str:
    """The node of a pod that failed or was disrupted ("" for one that did not, or that never had a node)."""
    status = pod.get("status") or {}
    failed = status.get("phase") == "Failed" or disruption_of(pod) or exited_with_error(pod)
    return str((pod.get("spec") or {}).get("nodeName") or "") if failed else ""


UNREACHABLE_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")


def node_lost(name: str, node: dict[str, Any] | None) -> str:
    """Why a node counts as lost ("" if it does not): deleted, NotReady, or tainted unreachable by the node
    lifecycle controller."""
    if node is None:
        return f"node {name} no longer exists"
    ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        return f"node {name} is NotReady: {ready.get('reason', '')} {ready.get('message', '')}".rstrip(": ")
    taints = [t.get("key") for t in (node.get("spec") or {}).get("taints") or []]
    if hit := next((t for t in UNREACHABLE_TAINTS if t in taints), None):
        return f"node {name} is tainted {hit}"
    return ""


RESTART_ATTEMPT_LABEL = "jobset.sigs.k8s.io/restart-attempt"


def restarts_in_place(pods: list[dict[str, Any]]) -> int:
    """How many times a job's pods were restarted in place: the JobSet restart attempt its pods carry (a TrainJob's
    JobSet recreates all of them on a restart); 0 for pods without it (a PyTorchJob's)."""
    attempts = [((p.get("metadata") or {}).get("labels") or {}).get(RESTART_ATTEMPT_LABEL) for p in pods]
    return max((int(a) for a in attempts if a and a.isdigit()), default=0)


def running_nodes(pods: list[dict[str, Any]]) -> tuple[str, ...]:
    """The nodes a job's pods are placed on."""
    return tuple(sorted({str(p["spec"]["nodeName"]) for p in pods if (p.get("spec") or {}).get("nodeName")}))


HOSTNAME = "kubernetes.io/hostname"


def avoiding_nodes(affinity: dict[str, Any] | None, nodes: Sequence[str]) -> dict[str, Any] | None:
    """`affinity` that also keeps pods off `nodes`: a NotIn on the hostname added to every required node selector
    term (terms are ORed, their expressions ANDed), or one term of its own."""
    if not nodes:
        return affinity
    out = copy.deepcopy(affinity or {})
    required = out.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", []) or [{}]
    avoid = {"key": HOSTNAME, "operator": "NotIn", "values": sorted(nodes)}
    required["nodeSelectorTerms"] = [{**t, "matchExpressions": [*t.get("matchExpressions", []), avoid]} for t in terms]
    return out


def with_avoided_nodes(spec: VitaTrainingRunSpec, index: int, nodes: Sequence[str]) -> VitaTrainingRunSpec:
    """The spec whose stage `index` keeps off `nodes` (an attempt's placement; the user's spec stays as written)."""
    if not nodes:
        return spec
    affinity = avoiding_nodes(stage_resources(spec, index).affinity, nodes)
    stages = list(spec.stages)
    override = stages[index].resources
    stages[index] = stages[index].model_copy(update={"resources": override.model_copy(update={"affinity": affinity})
                                                     if override else ResourcesOverride.model_validate(
                                                         {"affinity": affinity})})
    return spec.model_copy(update={"stages": stages})
