"""What the run's claims must be before a pod mounts them (pure: the claims as the API server returns them)."""

from __future__ import annotations

from typing import Any

from vita_api.plan import stage_resources
from vita_api.spec import VitaTrainingRunSpec

SHARED_MODES = {"dataset": {"ReadWriteMany", "ReadOnlyMany"}, "checkpoints": {"ReadWriteMany"}}


def claim_names(spec: VitaTrainingRunSpec) -> list[str]:
    return [v.claim_name for v in (spec.volumes.dataset, spec.volumes.checkpoints) if v is not None]


def claim_problems(spec: VitaTrainingRunSpec, claims: dict[str, dict[str, Any] | None]) -> list[str]:
    """A claim that does not exist, or one that several nodes cannot mount at once (ReadWriteOnce) while a stage
    runs on more than one node: each would leave pods Pending or failing after the GPUs are reserved."""
    nodes = max(stage_resources(spec, i).nodes for i in range(len(spec.stages)))
    out = []
    for role, volume in (("dataset", spec.volumes.dataset), ("checkpoints", spec.volumes.checkpoints)):
        if volume is None:
            continue
        claim = claims.get(volume.claim_name)
        if claim is None:
            out.append(f"spec.volumes.{role}: PersistentVolumeClaim {volume.claim_name} does not exist in the run's "
                       f"namespace; create it, or fix claimName")
            continue
        modes = set((claim.get("spec") or {}).get("accessModes") or []) | \
            set((claim.get("status") or {}).get("accessModes") or [])
        if nodes > 1 and not modes & SHARED_MODES[role]:
            held = ", ".join(sorted(modes)) or "of no access mode"
            wanted = " or ".join(sorted(SHARED_MODES[role]))
            out.append(f"spec.volumes.{role}: claim {volume.claim_name} is {held}, but a stage runs on {nodes} "
                       f"nodes, which all mount it; use a {wanted} claim, or resources.nodes: 1")
    return out
