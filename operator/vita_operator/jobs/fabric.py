"""Network profiles the platform owns (chart value fabric.profiles, a ConfigMap the operator reads at start): what
every trainer pod of a run needs to reach its peers over InfiniBand or RoCE. A run names a profile (spec.fabric.
profile), or a multi-node run gets the chart's default; run authors cannot set those fields themselves where the run
policy forbids them (extra resources, pod annotations, NCCL_* variables, IPC_LOCK). Pure: a profile is merged into
the run's spec before its jobs are built."""

from __future__ import annotations

import json
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from vita_api.plan import stage_resources
from vita_api.spec import VitaTrainingRunSpec

ENV = "VITA_OPERATOR_FABRIC"


class FabricProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)
    extra_resources: dict[str, str] = Field(default_factory=dict, description="e.g. rdma/rdma_shared_device_a: 1")
    pod_annotations: dict[str, str] = Field(default_factory=dict, description="e.g. k8s.v1.cni.cncf.io/networks")
    env: dict[str, str] = Field(default_factory=dict, description="NCCL_IB_HCA, NCCL_SOCKET_IFNAME, ...")
    ipc_lock: bool = False
    min_bus_bandwidth_gbps: float | None = Field(None, ge=0, alias="minBusBandwidthGBps")


class FabricSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)
    default_profile: str | None = None
    profiles: dict[str, FabricProfile] = Field(default_factory=dict)


def settings_from_env(value: str | None) -> FabricSettings:
    """The chart's profiles, checked at startup (a bad value stops the operator with the reason)."""
    if not value:
        return FabricSettings()
    try:
        settings = FabricSettings.model_validate(json.loads(value))
    except (ValueError, ValidationError) as e:
        raise SystemExit(f"{ENV}: the chart's fabric values are not valid ({e}); see fabric.profiles in "
                         "values.yaml") from e
    if settings.default_profile and settings.default_profile not in settings.profiles:
        raise SystemExit(f"{ENV}: fabric.defaultProfile {settings.default_profile!r} is not one of "
                         f"fabric.profiles ({', '.join(settings.profiles) or 'none'})")
    return settings


def multi_node(spec: VitaTrainingRunSpec) -> bool:
    return any(stage_resources(spec, i).nodes > 1 for i in range(len(spec.stages)))


def chosen_profile(spec: VitaTrainingRunSpec, settings: FabricSettings) -> str | None:
    """The run's profile: the one it names, else the platform's default for multi-node runs."""
    if spec.fabric.profile:
        return spec.fabric.profile
    return settings.default_profile if multi_node(spec) else None


def unknown_profile(spec: VitaTrainingRunSpec, settings: FabricSettings) -> str:
    """Why the run's profile cannot be used ("" when it can): a person must pick one the platform defines."""
    name = chosen_profile(spec, settings)
    if name is None or name in settings.profiles:
        return ""
    return (f"spec.fabric.profile {name!r} is not a network profile of this platform (defined: "
            f"{', '.join(sorted(settings.profiles)) or 'none'}); name one of them, or ask the platform team to add "
            f"it (chart value fabric.profiles)")


def with_profile(spec: VitaTrainingRunSpec, settings: FabricSettings) -> VitaTrainingRunSpec:
    """The spec as its jobs are built: the profile's resources, annotations, environment and IPC_LOCK added (the
    profile's win: they are the platform's), and its bandwidth floor where the run sets none."""
    name = chosen_profile(spec, settings)
    profile = settings.profiles.get(name) if name else None
    if profile is None:
        return spec
    resources = spec.resources.model_copy(update={
        "extra_resources": {**spec.resources.extra_resources, **profile.extra_resources}})
    trainer = spec.trainer.model_copy(update={
        "pod_annotations": {**spec.trainer.pod_annotations, **profile.pod_annotations},
        "env": {**spec.trainer.env, **profile.env}, "ipc_lock": spec.trainer.ipc_lock or profile.ipc_lock})
    floor = spec.fabric.min_bus_bandwidth_gbps
    fabric = spec.fabric.model_copy(update={"profile": name, "min_bus_bandwidth_gbps": (
        profile.min_bus_bandwidth_gbps if floor is None else floor)})
    return spec.model_copy(update={"resources": resources, "trainer": trainer, "fabric": fabric})

