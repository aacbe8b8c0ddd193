"""The `VitaTrainingRun` run spec: one typed model shared by `vita-train local`, the operator and the CRD.

Field names are camelCase in YAML (Kubernetes API conventions) and snake_case in Python.
Relative paths in `model`, `data` and `output` resolve against the dataset / checkpoint volume mount
on a cluster, and against the YAML file's folder locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.alias_generators import to_camel

from .constants import DEEPSPEED_PRESETS
from .errors import ConfigError

API_VERSION: Final = "vita.training.dev/v1alpha1"
API_GROUP = API_VERSION.split("/")[0]
KIND: Final = "VitaTrainingRun"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A run's name starts its PyTorchJobs' names (DNS-1035 for the training operator: a letter first) and is a label
# value on them; 40 leaves room for "-<stage>-<attempt>" before job names are hashed.
RUN_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
RUN_NAME_MAX = 40

ArgValue = str | int | float | bool
# What Kubernetes accepts where it will later read these values, so that the API server refuses a run at `kubectl
# apply` with the field path instead of a pod failing far from its author.
# A resource.Quantity (apimachinery's own OpenAPI pattern): "64Gi" is one, "64GB" and "lots" are not.
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|"
            r"(\.[0-9]+))))?$")
# The fix a pattern's CEL twin names at apply (the API server's own pattern error shows only the regex).
FIX = "x-vita-fix"
QUANTITY_FIX = ("must be a Kubernetes quantity: e.g. 64Gi or 1500Gi (binary), 64G (decimal), 8 or 500m (CPU); "
                "64GB, '1 TB' and words are not")
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64, json_schema_extra={FIX: QUANTITY_FIX})]
# A label value (node selector values), and a qualified name (label, annotation and extended resource keys).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# An environment variable name as a shell and torchrun pass it on.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A trainer flag name (HF TrainingArguments and VITA's flags are Python identifiers; argparse adds the dashes).
ARG_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# An image reference as the container runtime parses it (distribution's grammar): lowercase repository path,
# optional registry host and port, tag and/or sha256 digest.
IMAGE_REF = (r"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?"
             r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
             r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
ABSOLUTE_PATH = r"^/([^/]+(/[^/]+)*)?$"
# Keys of a map, by pattern: pydantic checks them; the CRD generator turns the pattern into a CEL rule with the
# description as its message (the API server's schemas cannot constrain keys otherwise). Maps carry maxProperties so
# that the rule's cost is bounded.
MAX_MAP_KEYS = 64
EnvName = Annotated[str, Field(pattern=ENV_NAME, max_length=253, description="names must be environment variable "
                               "names: letters, digits and '_', not starting with a digit")]
QualifiedName = Annotated[str, Field(pattern=QUALIFIED_NAME, max_length=253, description="keys must be qualified "
                                     "names as Kubernetes labels and annotations use them (an optional DNS prefix "
                                     "and '/', then letters, digits, '-', '_' and '.')")]
ArgName = Annotated[str, Field(pattern=ARG_NAME, max_length=253, description="names must be trainer flags without "
                               "their dashes (letters, digits and '_', e.g. learning_rate)")]
# Bounds the API server needs to estimate the CRD's CEL rule costs (unbounded lists make it reject the CRD).
MAX_STAGES = 32
MAX_STAGE_ARGS = 128
# Trainer flags that the stage plan derives (where a stage reads from and writes to); a stage may not set them.
PLAN_DERIVED_ARGS = ("output_dir", "model_name_or_path")
# Job settings that older specs put in a stage's args, and the stage field that holds each now.
JOB_SETTING_ARGS = {"active_deadline_seconds": "activeDeadlineSeconds"}
# Kueue owns a queued job's suspend field: suspending it ourselves would start a suspend/unsuspend loop.
# How a stage attempt runs on the cluster: a Kubeflow training-operator v1 PyTorchJob, or a Kubeflow Trainer v2
# TrainJob on the chart's ClusterTrainingRuntime. Unset: the operator's default (a chart value).
JOB_BACKENDS = ("pytorchjob", "trainjob")
# What a TrainJob cannot carry per job (Trainer v2.3's runtimePatches have no field for it): the runtime decides.
TRAINJOB_VOLCANO = ("scheduling.volcanoQueue needs the pytorchjob backend: a TrainJob's gang scheduling comes from "
                    "its ClusterTrainingRuntime's podGroupPolicy; use scheduling.kueueQueue, or the pytorchjob backend")
TRAINJOB_PRIORITY = ("resources.priorityClassName needs the pytorchjob backend: a TrainJob cannot set its pods' "
                     "priority class; use scheduling.kueuePriorityClass with a Kueue queue, or the "
                     "pytorchjob backend")
KUEUE_PRIORITY_NEEDS_QUEUE = "scheduling.kueuePriorityClass needs scheduling.kueueQueue: only Kueue reads it"
TOPOLOGY_NEEDS_QUEUE = "scheduling.topology needs scheduling.kueueQueue: Kueue places the pods by topology"
SUSPEND_WITH_KUEUE = ("spec.suspend cannot be combined with scheduling.kueueQueue: Kueue owns the job's suspend "
                      "field and would unsuspend it again, restarting GPU pods; deactivate the run's Kueue "
                      "Workload instead (spec.active: false)")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class ModelSpec(_Spec):
    base: str = Field(description="Folder the first stage starts from: a VITA folder (save_pretrained output), a "
                            "released VITA-1.5 folder (config model_type vita-Qwen2), or a Hugging Face LLM such "
                            "as Qwen2.5-7B-Instruct with visionTower set; the last two are prepared once into "
                            "<output>/base-model")
    tokenizer: str = Field("qwen2.5", description="'qwen2.5' for the real vocabulary built offline, or a tokenizer "
                                                  "folder")
    vision_tower: str | None = Field(None, description="InternViT folder: of a released VITA-1.5 base (default: "
                                     "the path its config records), or to compose a VITA with an LLM base")
    audio_encoder: str | None = Field(None, description="Whale audio-encoder folder (final.pt, train.yaml, "
                                      "global_cmvn), in the same two cases as visionTower")
    mm_projector_type: str | None = Field(None, pattern=r"^(linear|identity|mlp\d+x_gelu)$",
                                          description="Vision projector type: what a base composed from an LLM "
                                          "is built with (unset: mlp2x_gelu), and what a VITA base must have")


class DataSpec(_Spec):
    registry: str = Field(description="Dataset registry YAML (image folders, audio root, datasets, mixtures)")


TOLERATION_EXISTS_VALUE = ("a toleration with operator Exists matches every value of its key: remove value, or use "
                           "operator Equal")


class Toleration(_Spec):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, json_schema_extra={
        "x-kubernetes-validations": [{"rule": "!(has(self.operator) && self.operator == 'Exists' && has(self.value) "
                                              "&& self.value != '')", "message": TOLERATION_EXISTS_VALUE}]})
    key: str | None = Field(None, pattern=QUALIFIED_NAME, max_length=253)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(None, pattern=LABEL_VALUE, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> "Toleration":
        if self.operator == "Exists" and self.value:
            raise ValueError(TOLERATION_EXISTS_VALUE)
        return self


class ResourcesSpec(_Spec):
    nodes: int = Field(1, ge=1, le=1024, description="Number of nodes (1 Master + nodes-1 Workers)")
    gpus_per_node: int = Field(0, ge=0, le=16, description="GPUs per node; also torchrun's nproc_per_node")
    cpu_procs_per_node: int = Field(1, ge=1, le=64, description="torchrun processes per node when gpusPerNode is 0")
    cpu: Quantity = Field("8", description="CPU request and limit per pod")
    memory: Quantity = Field("64Gi", description="Memory request and limit per pod")
    shm_size: Quantity = Field("16Gi", description="Size of the memory-backed /dev/shm")
    node_selector: dict[QualifiedName, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63, json_schema_extra={
        FIX: "node selector values are label values: at most 63 letters, digits, '-', '_' and '.', starting and "
             "ending with a letter or digit (no spaces)"})]] = Field(
        default_factory=dict, max_length=MAX_MAP_KEYS)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_MAP_KEYS)
    priority_class_name: str | None = Field(None, pattern=DNS_SUBDOMAIN, max_length=253)
    extra_resources: dict[QualifiedName, Quantity] = Field(max_length=MAX_MAP_KEYS,
        default_factory=dict, description="More resources per pod, requested and limited alike, e.g. "
        "{'rdma/rdma_shared_device_a': '1'} or {'nvidia.com/hostdev': '8'} for InfiniBand/RoCE")
    affinity: dict[str, Any] | None = Field(None, description="Pod affinity, as Kubernetes writes it (e.g. "
                                            "keep a job's nodes in one rack or NVLink domain)")

    def overridden(self, override: BaseModel | None) -> "ResourcesSpec":
        """These resources with the fields a stage sets replaced, and the rest kept."""
        if override is None:
            return self
        return ResourcesSpec.model_validate({**self.model_dump(), **override.model_dump(exclude_none=True)})


# A stage's resources: the same fields, all optional and without defaults, so that `{nodes: 2}` keeps the run's
# GPUs, selectors and tolerations (with defaults, the API server would fill in every field and replace them all).
if TYPE_CHECKING:  # the type checker reads it as the full spec; at runtime every field is optional
    ResourcesOverride = ResourcesSpec
else:
    ResourcesOverride = create_model(
        "ResourcesOverride", __base__=_Spec,
        **{name: (Annotated[field.annotation, *field.metadata] | None if field.metadata else field.annotation | None,
                  Field(None, description=field.description, json_schema_extra=field.json_schema_extra))
           for name, field in ResourcesSpec.model_fields.items()})


class PreflightSpec(_Spec):
    enabled: bool = Field(True, description="Check the data of every stage in a CPU Job before the first GPU job")
    max_bad_fraction: float = Field(0.0, ge=0, le=1, description="Largest fraction of a stage's samples that may "
                                    "have problems and still start training (the count is kept in status)")
    decode: bool = Field(False, description="Decode every image, audio clip and chosen video frame in full "
                         "(`vita-data check --decode`): slower, and also finds truncated or cut files whose headers "
                         "are fine")
    cpu: Quantity = Field("4", description="CPU request and limit of the preflight pod")
    memory: Quantity = Field("16Gi", description="Memory request and limit of the preflight pod")
    deadline_seconds: int = Field(3600, ge=60, description="The preflight Job's activeDeadlineSeconds: a check that "
                                  "has not finished by then (pods that never start, a hung volume) fails and is "
                                  "retried, then fails the run with the reason")


class EvaluationSpec(_Spec):
    tasks: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=64, description="lmms-eval task or group names, e.g. mme, mmbench_en_dev, "
        "mathvista_testmini, videomme, librispeech_test_clean; the eval job reads their datasets from the Hugging "
        "Face Hub (HF_TOKEN through trainer.envFromSecrets) into a cache on the checkpoint volume")
    after_stages: list[str] = Field(default_factory=list, max_length=MAX_STAGES, description="Stages whose output "
                                    "is evaluated, each as its own job once the stage succeeds (the next stage does "
                                    "not wait); empty: the last stage")
    include_path: str | None = Field(None, description="A folder of more lmms-eval task YAMLs (local tasks), on "
                                     "the dataset volume")
    limit: int | None = Field(None, ge=1, description="At most this many documents per task (a quick check)")
    gpus: int = Field(1, ge=0, le=16, description="GPUs of the evaluation pod (one process on the first; 0: CPU)")
    cpu: Quantity = Field("8", description="CPU request and limit of the evaluation pod")
    memory: Quantity = Field("64Gi", description="Memory request and limit of the evaluation pod")
    deadline_seconds: int = Field(86400, ge=60, description="The evaluation Job's activeDeadlineSeconds")


class InitializerModel(_Spec):
    name: str = Field(min_length=1, max_length=200, description="A name `vita-model download --list` knows (e.g. "
                      "vita-1.5, internvit-300m-448px), or a Hugging Face repo id owner/name")
    revision: str | None = Field(None, description="Branch, tag or commit (default: the catalogue's, else main)")
    include: list[str] = Field(default_factory=list, max_length=32, description="Only files matching these globs")
    exclude: list[str] = Field(default_factory=list, max_length=32, description="Not files matching these globs")


class InitializersSpec(_Spec):
    models: list[InitializerModel] = Field(default_factory=list, max_length=16, description="Pretrained parts, "
                                           "fetched into modelsPath on the dataset volume")
    datasets: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=32, description="`vita-data download` source names (e.g. llava_instruct, "
        "coco, gqa), fetched and unpacked into datasetsPath, whose registry.yaml they update")
    models_path: str = Field("models", description="Folder on the dataset volume for the models")
    datasets_path: str = Field(".", description="Folder on the dataset volume for the datasets and their registry")
    manifest: str | None = Field(None, description="Another download manifest on the dataset volume (an internal "
                                 "mirror), instead of the shipped sources")
    token_secret: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+$",
                                     description="'secret/key' holding a Hugging Face token (HF_TOKEN)")
    cpu: Quantity = Field("4", description="CPU request and limit of the initializer pod")
    memory: Quantity = Field("16Gi", description="Memory request and limit of the initializer pod")
    deadline_seconds: int = Field(172800, ge=60, description="The initializer Job's activeDeadlineSeconds")


class ExportSpec(_Spec):
    format: Literal["vita15"] = Field("vita15", description="vita15: VITA-1.5's own layout (vita-Qwen2 config, its "
                                      "key names, the InternViT and whale folders), for VITA's inference and "
                                      "VLMEvalKit")
    path: str = Field("export-vita15", description="Folder the export writes, on the checkpoint volume: relative to "
                      "the run's output, or absolute")
    cpu: Quantity = Field("8", description="CPU request and limit of the export pod (no GPU)")
    memory: Quantity = Field("64Gi", description="Memory request and limit of the export pod: the model's weights in "
                        "their dtype, about twice (a 7B model in bf16: ~15 GiB)")
    deadline_seconds: int = Field(21600, ge=60, description="The export Job's activeDeadlineSeconds")


class VolumeSpec(_Spec):
    claim_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="PersistentVolumeClaim name")
    mount_path: str = Field(pattern=ABSOLUTE_PATH, max_length=1024,
                            description="Where the volume is mounted in trainer pods (an absolute path)",
                            json_schema_extra={FIX: "mountPath must be an absolute path, e.g. /data"})


SAME_MOUNT = "volumes.dataset and volumes.checkpoints need different mountPaths: one would hide the other"


class VolumesSpec(_Spec):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, json_schema_extra={
        "x-kubernetes-validations": [{"rule": "!(has(self.dataset) && has(self.checkpoints) && "
                                              "self.dataset.mountPath == self.checkpoints.mountPath)",
                                      "message": SAME_MOUNT}]})
    dataset: VolumeSpec | None = Field(None, description="Shared dataset volume, mounted read-only")
    checkpoints: VolumeSpec | None = Field(None, description="Checkpoint volume, mounted read-write")

    @model_validator(mode="after")
    def _distinct_mounts(self) -> "VolumesSpec":
        if self.dataset and self.checkpoints and self.dataset.mount_path == self.checkpoints.mount_path:
            raise ValueError(SAME_MOUNT)
        return self


class TopologySpec(_Spec):
    level: str = Field(pattern=QUALIFIED_NAME, max_length=317, description="The node label of the topology domain "
                       "every pod of a stage's job must share (Kueue Topology-Aware Scheduling), e.g. "
                       "cloud.provider.com/topology-block")
    mode: Literal["required", "preferred"] = Field("required", description="required: wait until one domain "
                                                   "fits the whole job; preferred: the tightest domain that fits")


class SchedulingSpec(_Spec):
    kueue_queue: str | None = Field(None, description="Kueue LocalQueue name (label kueue.x-k8s.io/queue-name)")
    kueue_priority_class: str | None = Field(
        None, description="Kueue WorkloadPriorityClass of the run's jobs (label kueue.x-k8s.io/priority-class): "
                          "a higher one preempts lower ones in its ClusterQueue; needs kueueQueue")
    volcano_queue: str | None = Field(None, description="Volcano queue (runPolicy.schedulingPolicy.queue)")
    topology: TopologySpec | None = Field(None, description="Place each stage's pods in one topology domain "
                                          "(block, rack) by Kueue's Topology-Aware Scheduling; needs kueueQueue "
                                          "and a ClusterQueue whose ResourceFlavor names a Topology")


class FabricSpec(_Spec):
    profile: str | None = Field(None, pattern=DNS_LABEL, max_length=63, description="A network profile the platform "
                                "defines (chart value fabric.profiles): the RDMA device, secondary network, NCCL "
                                "settings and IPC_LOCK every trainer pod gets. Unset: the platform's default for "
                                "multi-node runs (fabric.defaultProfile), none for one node")
    min_bus_bandwidth_gbps: float | None = Field(None, ge=0, alias="minBusBandwidthGBps", description="A multi-node "
                                                 "stage whose all-reduce probe "
                                                 "measures less (GB/s, nccl-tests' bus bandwidth) fails at once "
                                                 "instead of training at socket speed. Unset: the profile's floor; "
                                                 "0: none")


# CEL rules of a stage; the API server checks them at `kubectl apply`.
_STAGE_RULES: list[Any] = [
    {"rule": "!has(self.args) || !(" + " || ".join(f"has(self.args.{a})" for a in PLAN_DERIVED_ARGS) + ")",
     "message": f"args may not set {' or '.join(PLAN_DERIVED_ARGS)}: the stage plan derives them"},
    *[{"rule": f"!has(self.args) || !has(self.args.{arg})",
       "message": f"args.{arg} is a job setting, not a trainer flag: set the stage's {field} instead"}
      for arg, field in JOB_SETTING_ARGS.items()],
    {"rule": "!(has(self.evalDatasetUse) && has(self.evalHoldout))",
     "message": "evalDatasetUse and evalHoldout both name validation data: give one"}]


class StageSpec(_Spec):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True,
                              json_schema_extra={"x-kubernetes-validations": _STAGE_RULES})
    name: str = Field(pattern=DNS_LABEL, max_length=30, description="Stage name, unique in the run (DNS label)")
    preset: str = Field(description="Stage preset name or alias, e.g. vision_align or 1.1")
    dataset_use: str = Field(description="Mixture or dataset key in the registry")
    eval_dataset_use: str | None = Field(None, description="Validation data: a mixture or dataset key in the "
                                         "registry (evaluated every args.eval_steps with args.eval_strategy, and "
                                         "when the stage ends)")
    eval_holdout: float | None = Field(None, ge=0, le=0.5, description="Validation data held out of datasetUse: "
                                       "this fraction of its samples, chosen with the stage's seed, never trained "
                                       "on (instead of evalDatasetUse; 0 or unset: none)")
    args: dict[ArgName, ArgValue] = Field(default_factory=dict, max_length=MAX_STAGE_ARGS,
                                      description="Trainer flag overrides (HF TrainingArguments and VITA flags)")
    resources: ResourcesOverride | None = Field(None, description="For this stage, the fields of the run's "
                                                "resources to change; unset fields keep the run's values")
    active_deadline_seconds: int | None = Field(None, ge=60, description="Each attempt's job fails this long after "
                                                "it started (the PyTorchJob's runPolicy, the TrainJob's spec); unset: "
                                                "no deadline")
    retry_limit: int = Field(2, ge=0, le=20, description="Failed attempts to retry, resuming from the last checkpoint "
                             "(raising it on a Failed run resumes the stage); disruptions do not count")
    disruption_limit: int = Field(20, ge=0, le=1000, description="Disruptions (a lost or drained node, eviction, "
                                  "preemption: the pod's DisruptionTarget condition) to recover from without using "
                                  "retryLimit: attempts they ended, and a TrainJob's in-place restarts")
    oom_policy: Literal["adjust", "fail"] = Field("adjust", description="When the GPU runs out of memory: adjust "
                                                  "retries from the last checkpoint with half the micro-batch and "
                                                  "twice the accumulation (same global batch and schedule), down to "
                                                  "micro-batch 1, without using retryLimit; fail stops the stage")

    @model_validator(mode="after")
    def _one_kind_of_validation_data(self) -> "StageSpec":
        if self.eval_dataset_use and self.eval_holdout:
            raise ValueError("evalDatasetUse and evalHoldout both name validation data: give one")
        return self


class TrainerSpec(_Spec):
    image: str = Field("ghcr.io/vita-trainer/trainer:0.1.0", pattern=IMAGE_REF, max_length=512,
                       description="Trainer container image (a tag, or a digest: image@sha256:...)",
                       json_schema_extra={FIX: "image must be a container image reference: [registry[:port]/]"
                                               "lowercase/path[:tag][@sha256:digest], e.g. "
                                               "ghcr.io/vita-trainer/trainer:0.1.0"})
    deepspeed: Literal[(*DEEPSPEED_PRESETS, "none")] = Field(  # type: ignore[valid-type]
        "zero3", description="Shipped DeepSpeed config")
    metrics_port: int = Field(9400, ge=1024, le=65535, description="Port of the trainer's /metrics on rank 0")
    env_from_secrets: dict[EnvName, str] = Field(default_factory=dict, max_length=MAX_MAP_KEYS,
                                                 description="Env var name -> 'secret/key' reference, never a value")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull a private trainer image")
    service_account_name: str | None = Field(None, pattern=DNS_LABEL,
                                             description="ServiceAccount of the trainer pods (default: the "
                                                         "namespace's)")
    env: dict[EnvName, str] = Field(default_factory=dict, max_length=MAX_MAP_KEYS, description="Plain env vars for "
                                    "the trainer, e.g. WANDB_PROJECT (secrets go in envFromSecrets; the chart's "
                                    "run policy denies some: LD_PRELOAD, PYTHONPATH, HF_ENDPOINT, NCCL_*...)")
    pod_annotations: dict[QualifiedName, str] = Field(default_factory=dict, max_length=MAX_MAP_KEYS,
                                                      description="Annotations on trainer pods, e.g. "
                                            "k8s.v1.cni.cncf.io/networks for a Multus secondary network")
    collective_timeout_seconds: int = Field(900, ge=60, description="A collective (all-reduce, all-gather, barrier) "
                                            "that does not finish in this long ends the job (--ddp_timeout), with "
                                            "NCCL's flight recorder written beside the stage's checkpoints; must "
                                            "exceed the longest checkpoint save")
    ipc_lock: bool = Field(False, description="Add the IPC_LOCK capability (RDMA memory registration). Not allowed "
                           "by PodSecurity 'restricted' or 'baseline': the namespace must be 'privileged'")
    backend: Literal[JOB_BACKENDS] | None = Field(  # type: ignore[valid-type]
        None, description="How each stage runs: 'pytorchjob' (Kubeflow training operator v1) or 'trainjob' "
        "(Kubeflow Trainer v2, on the chart's ClusterTrainingRuntime). Unset: the operator's default, recorded in "
        "status.backend when the run starts. Immutable",
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": "trainer.backend is immutable: delete and recreate the run"}]})


_TRAINJOB = "has(self.trainer) && has(self.trainer.backend) && self.trainer.backend == 'trainjob'"

# What a run on a cluster must also satisfy (the CRD checks it, plan.cluster_problems is its twin; `vita-train local`
# writes beside its YAML): checkpoints and outputs live on the checkpoint volume, which outlives the pods.
NO_CHECKPOINT_VOLUME = ("a run on a cluster needs volumes.checkpoints (a ReadWriteMany claim for more than one node): "
                        "without it the checkpoints and every stage's output are written inside the pods and lost "
                        "with them")
OUTPUT_ESCAPES = ("output may not contain '..': it must stay inside the checkpoint volume (a path relative to its "
                  "mount, e.g. runs/my-run)")
OUTPUT_OUTSIDE = ("an absolute output must be under volumes.checkpoints.mountPath, or the checkpoints are written "
                  "outside the volume and lost with the pod; write it relative to the mount, e.g. runs/my-run")
CLUSTER_RULES: list[dict[str, str]] = [
    {"rule": "has(self.volumes) && has(self.volumes.checkpoints)", "message": NO_CHECKPOINT_VOLUME,
     "fieldPath": ".volumes", "reason": "FieldValueRequired"},
    {"rule": "!self.output.matches('(^|/)[.][.](/|$)')", "message": OUTPUT_ESCAPES, "fieldPath": ".output"},
    {"rule": "!self.output.startsWith('/') || !has(self.volumes) || !has(self.volumes.checkpoints) || "
             "(self.output + '/').startsWith(self.volumes.checkpoints.mountPath + '/')",
     "message": OUTPUT_OUTSIDE, "fieldPath": ".output"},
]


class VitaTrainingRunSpec(_Spec):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, json_schema_extra={
        "x-kubernetes-validations": [
            {"rule": "self.stages.all(s, self.stages.filter(t, t.name == s.name).size() == 1)",
             "message": "stage names must be unique"},
            {"rule": "!(has(self.scheduling) && has(self.scheduling.kueueQueue) && has(self.scheduling.volcanoQueue))",
             "message": "set at most one of scheduling.kueueQueue and scheduling.volcanoQueue"},
            {"rule": "!(has(self.scheduling) && has(self.scheduling.kueuePriorityClass) && "
                     "!has(self.scheduling.kueueQueue))",
             "message": KUEUE_PRIORITY_NEEDS_QUEUE},
            {"rule": "!(has(self.scheduling) && has(self.scheduling.topology) && !has(self.scheduling.kueueQueue))",
             "message": TOPOLOGY_NEEDS_QUEUE},
            {"rule": "!(has(self.suspend) && self.suspend && has(self.scheduling) && has(self.scheduling.kueueQueue))",
             "message": SUSPEND_WITH_KUEUE},
            {"rule": f"!({_TRAINJOB} && has(self.scheduling) && has(self.scheduling.volcanoQueue))",
             "message": TRAINJOB_VOLCANO},
            {"rule": f"!({_TRAINJOB} && ((has(self.resources) && has(self.resources.priorityClassName)) || "
                     "self.stages.exists(s, has(s.resources) && has(s.resources.priorityClassName))))",
             "message": TRAINJOB_PRIORITY},
            {"rule": "!has(self.evaluation) || !has(self.evaluation.afterStages) || "
                     "self.evaluation.afterStages.all(n, self.stages.exists(s, s.name == n))",
             "message": "evaluation.afterStages must name stages of this run"},
        ]})
    model: ModelSpec
    data: DataSpec
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES, description="Stages, run in order")
    output: str = Field(min_length=1, max_length=1024, description="Output root; stage k writes <output>/<stage "
                        "name>. On a cluster: relative to the checkpoint volume's mount (no '..'), or absolute under "
                        "it")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    volumes: VolumesSpec = Field(default_factory=VolumesSpec)
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    fabric: FabricSpec = Field(default_factory=FabricSpec)
    suspend: bool = Field(False, description="Suspend the run (passed to the current job's runPolicy.suspend)")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the run, and with it its jobs, "
                                                   "this long after it Succeeded or Failed (its outputs on the "
                                                   "volumes stay); unset: the operator's default (chart value "
                                                   "runTTLSecondsAfterFinished)")
    startup_timeout_seconds: int | None = Field(None, ge=30, description="A stage job whose pods cannot all "
                                                "start this long after it was created or admitted (a quota, a "
                                                "webhook or PodSecurity refusing some of them, an image that does "
                                                "not pull) is deleted and counted as a failed attempt, instead of "
                                                "waiting out the hang window; pods the scheduler cannot place yet "
                                                "wait. Unset: the operator's default (chart value "
                                                "startupTimeoutSeconds)")
    progress_interval_seconds: int = Field(30, ge=5, le=3600, description="How often the operator reads the "
                                           "current stage's metrics endpoint into status.progress")
    hang_timeout_seconds: int | None = Field(3600, ge=1, description="A running stage whose step does not move for "
                                             "this long (counted from its job's latest admission) is Hung: its job "
                                             "is deleted and the stage retried from its last checkpoint (counts "
                                             "against retryLimit); null turns detection off. A dead peer ends the job "
                                             "sooner, by trainer.collectiveTimeoutSeconds")
    preflight: PreflightSpec = Field(default_factory=PreflightSpec, description="vita-data check of every stage's "
                                     "datasetUse on the dataset volume before any GPU job; problems fail the run")
    initializers: InitializersSpec | None = Field(None, description="Fetch the run's pretrained parts and datasets "
                                                  "onto the dataset volume before preflight, as its own Job (a "
                                                  "revision already there is not fetched again)")
    export: ExportSpec | None = Field(None, description="After the last stage, export its model (vita-model export) "
                                      "to a folder on the checkpoint volume, as its own Job; status.export names "
                                      "the folder")
    evaluation: EvaluationSpec | None = Field(None, description="Benchmarks (lmms-eval) after stages: scores in "
                                              "status.evaluations; a failed evaluation is reported and does not fail "
                                              "the run")


class Metadata(_Spec):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    name: str = Field(pattern=RUN_NAME, max_length=RUN_NAME_MAX)
    namespace: str | None = None


class VitaTrainingRun(_Spec):
    api_version: Literal["vita.training.dev/v1alpha1"] = API_VERSION
    kind: Literal["VitaTrainingRun"] = KIND
    metadata: Metadata
    spec: VitaTrainingRunSpec


def load_run(path: str | Path) -> VitaTrainingRun:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run spec {path} does not exist")
    try:
        return VitaTrainingRun.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as e:
        raise ConfigError(f"run spec {path} is invalid:\n{e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"run spec {path} is not valid YAML: {e}") from e
