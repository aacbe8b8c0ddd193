"""The stage plan: (run spec, stage index) -> trainer arguments. Pure; shared by the local runner and the operator.

Handoff rule: a stage starts from the newest earlier stage that saved full weights (or the run's base model),
plus the partial weights ({group}.bin) of every partial stage after that one, applied in stage order.
"""

from __future__ import annotations

from typing import Any

import posixpath
from dataclasses import dataclass

from .constants import MODEL_MAX_LENGTH
from .errors import ConfigError
from .spec import (JOB_SETTING_ARGS, KUEUE_PRIORITY_NEEDS_QUEUE, NO_CHECKPOINT_VOLUME, OUTPUT_ESCAPES, OUTPUT_OUTSIDE,
                   PLAN_DERIVED_ARGS, SUSPEND_WITH_KUEUE, TOPOLOGY_NEEDS_QUEUE, TRAINJOB_PRIORITY, TRAINJOB_VOLCANO,
                   ResourcesSpec, VitaTrainingRunSpec)
from .presets import FREEZE_FLAGS, as_bool, get_preset, resolve_trainable, saves_full_weights

STAGE_DONE_FILE = "vita_stage.json"   # written by the trainer when a stage finishes
# Where each rank's NCCL flight recorder dump goes, inside the stage's output folder (TORCH_NCCL_DEBUG_INFO_TEMP_FILE).
FLIGHT_RECORDER_DIR = "nccl-flight-recorder"
PREFLIGHT = "preflight"                # names the run's data-check Job; no stage may take it
EVALUATION = "eval"                    # starts the names of the run's benchmark Jobs: <run>-eval-<stage>-1
EXPORT = "export"                      # names the run's export Job: <run>-export-<attempt>; no stage may take it
INITIALIZE = "init"                    # names the run's initializer Job: <run>-init-<attempt>; no stage may take it
PREPARED_BASE_DIR = "base-model"      # beside the stage outputs: the run's base, imported or composed once
EVALUATION_DIR = "eval"                # in a stage's output folder: lmms-eval's results of spec.evaluation
GPUS_ENV = "VITA_EXPECTED_GPUS"       # set on pods that request GPUs: the trainer then refuses to fall back to CPU


@dataclass(frozen=True)
class PathRoots:
    """Where relative spec paths point: the dataset and checkpoint mounts (or the YAML's folder locally)."""
    data: str
    checkpoints: str


DATASET_MOUNT_DEFAULT, CHECKPOINT_MOUNT_DEFAULT = "/data", "/checkpoints"


def cluster_roots(spec: VitaTrainingRunSpec) -> PathRoots:
    """On a cluster: the run's volume mounts (where trainer and preflight pods mount them)."""
    v = spec.volumes
    return PathRoots(data=v.dataset.mount_path if v.dataset else DATASET_MOUNT_DEFAULT,
                     checkpoints=v.checkpoints.mount_path if v.checkpoints else CHECKPOINT_MOUNT_DEFAULT)


def resolve_path(root: str, path: str) -> str:
    """A spec path: absolute as given, relative under its root (a volume mount, or the YAML's folder)."""
    return path if posixpath.isabs(path) else posixpath.join(root, path)


def trainable_groups(spec: VitaTrainingRunSpec, index: int) -> frozenset[str]:
    stage = spec.stages[index]
    flags = {k: as_bool(stage.args[k], f"--{k}") for k in FREEZE_FLAGS if k in stage.args}
    return resolve_trainable(get_preset(stage.preset), **flags)


def saves_full_model(spec: VitaTrainingRunSpec, index: int) -> bool:
    args = spec.stages[index].args
    return saves_full_weights(trainable_groups(spec, index),
                              as_bool(args.get("save_full_model", False), "--save_full_model"),
                              lora=as_bool(args.get("lora_enable", False), "--lora_enable"))


def stage_output_dir(spec: VitaTrainingRunSpec, index: int, roots: PathRoots) -> str:
    return posixpath.join(resolve_path(roots.checkpoints, spec.output), spec.stages[index].name)


def stage_inputs(spec: VitaTrainingRunSpec, index: int, roots: PathRoots) -> tuple[str, list[str]]:
    """(model folder to start from, partial weight files to load on top, in order)."""
    partial_stages: list[int] = []
    base = resolve_path(roots.data, spec.model.base)
    for j in range(index - 1, -1, -1):
        if saves_full_model(spec, j):
            base = stage_output_dir(spec, j, roots)
            break
        partial_stages.append(j)
    # The CTC head only serves the CTC objective: a stage without it has no such module, so it is not handed on.
    ctc = get_preset(spec.stages[index].preset).objective == "ctc"
    files = [posixpath.join(stage_output_dir(spec, j, roots), f"{g}.bin")
             for j in reversed(partial_stages) for g in sorted(trainable_groups(spec, j)) if ctc or g != "ctc_head"]
    return base, files


def with_stage_args(spec: VitaTrainingRunSpec, index: int, overrides: dict[str, Any]) -> VitaTrainingRunSpec:
    """The spec with some of one stage's args replaced: what one attempt runs with (e.g. after running out of
    memory), leaving the user's spec as written."""
    if not overrides:
        return spec
    stages = list(spec.stages)
    stages[index] = stages[index].model_copy(update={"args": {**stages[index].args, **overrides}})
    return spec.model_copy(update={"stages": stages})


def stage_resources(spec: VitaTrainingRunSpec, index: int) -> ResourcesSpec:
    return spec.resources.overridden(spec.stages[index].resources)


def evaluated_stages(spec: VitaTrainingRunSpec) -> list[int]:
    """The stages spec.evaluation asks to benchmark, in run order: those it names, else the last."""
    if spec.evaluation is None:
        return []
    names = spec.evaluation.after_stages or [spec.stages[-1].name]
    return [i for i, s in enumerate(spec.stages) if s.name in names]


def evaluation_dir(spec: VitaTrainingRunSpec, index: int, roots: PathRoots) -> str:
    return posixpath.join(stage_output_dir(spec, index, roots), EVALUATION_DIR)


def evaluation_args(spec: VitaTrainingRunSpec, index: int, roots: PathRoots) -> list[str]:
    """`vita-model eval` arguments for one stage's output (its base too, for an adapter-only stage)."""
    ev = spec.evaluation
    if ev is None:
        raise ConfigError("the run asks for no evaluation (spec.evaluation)")
    args = ["eval", stage_output_dir(spec, index, roots), "--base", stage_inputs(spec, index, roots)[0],
            "--tasks", ",".join(ev.tasks), "--output", evaluation_dir(spec, index, roots)]
    if ev.include_path:
        args += ["--include-path", resolve_path(roots.data, ev.include_path)]
    return args + (["--limit", str(ev.limit)] if ev.limit else [])


def export_dir(spec: VitaTrainingRunSpec, roots: PathRoots) -> str:
    if spec.export is None:
        raise ConfigError("the run asks for no export (spec.export)")
    return resolve_path(resolve_path(roots.checkpoints, spec.output), spec.export.path)


def export_args(spec: VitaTrainingRunSpec, roots: PathRoots) -> list[str]:
    """`vita-model export` arguments for the last stage's output."""
    if spec.export is None:
        raise ConfigError("the run asks for no export (spec.export)")
    return ["export", stage_output_dir(spec, len(spec.stages) - 1, roots), export_dir(spec, roots),
            "--format", spec.export.format]


def initializer_args(spec: VitaTrainingRunSpec, roots: PathRoots) -> list[str]:
    """`python -m vita_trainer.tools.initialize` arguments: spec.initializers, its paths on the dataset volume."""
    init = spec.initializers
    if init is None:
        raise ConfigError("the run asks for no initializers (spec.initializers)")
    args = ["--models-root", posixpath.normpath(resolve_path(roots.data, init.models_path)),
            "--datasets-root", posixpath.normpath(resolve_path(roots.data, init.datasets_path))]
    for i, m in enumerate(init.models):
        args += ["--model", m.name + (f"@{m.revision}" if m.revision else "")]
        args += [a for g in m.include for a in ("--include", f"{i}={g}")]
        args += [a for g in m.exclude for a in ("--exclude", f"{i}={g}")]
    args += [a for s in init.datasets for a in ("--source", s)]
    args += ["--metrics-port", str(spec.trainer.metrics_port)]  # bytes so far, for status.initializers.progress
    return args + (["--manifest", resolve_path(roots.data, init.manifest)] if init.manifest else [])


def problems_in_stages(problems: list[str]) -> bool:
    """A stage's own problem (a bad preset or freeze flag) already said: checks that read its groups wait."""
    return any(p.startswith("stages[") for p in problems)


def check_spec(spec: VitaTrainingRunSpec) -> list[str]:
    """Semantic problems the schema cannot see. Empty list means the spec is runnable."""
    problems = []
    names = [s.name for s in spec.stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"stage names must be unique; repeated: {dupes}")
    if PREPARED_BASE_DIR in names:
        problems.append(f"no stage may be named {PREPARED_BASE_DIR!r}: the run keeps its imported or composed "
                        f"base model in that folder of the output")
    for taken, job in ((PREFLIGHT, "data check"), (EXPORT, "export"), (INITIALIZE, "initializer")):
        if taken in names:
            problems.append(f"no stage may be named {taken!r}: the run's {job} Job takes that name")
    for i, stage in enumerate(spec.stages):
        try:
            trainable_groups(spec, i)
        except ConfigError as e:
            problems.append(f"stages[{i}] ({stage.name}): {e}")
        for arg, moved in JOB_SETTING_ARGS.items():
            if arg in stage.args:
                problems.append(f"stages[{i}] ({stage.name}): args.{arg} is a job setting, not a trainer flag: set "
                                f"stages[{i}].{moved} instead")
        if any(a in stage.args for a in PLAN_DERIVED_ARGS):
            problems.append(f"stages[{i}] ({stage.name}): args may not set output_dir or model_name_or_path; "
                            f"the plan derives them from `output` and the previous stage")
    if spec.export is not None and not problems_in_stages(problems) and not saves_full_model(spec, len(names) - 1):
        problems.append(f"spec.export needs a model: the last stage ({names[-1]}) saves only the groups it trains; "
                        f"set its args.save_full_model: true, or end with a stage that trains the LLM")
    if spec.evaluation and (unknown := [n for n in spec.evaluation.after_stages if n not in names]):
        problems.append(f"evaluation.afterStages names stage(s) this run does not have: {unknown}")
    if spec.suspend and spec.scheduling.kueue_queue:
        problems.append(SUSPEND_WITH_KUEUE)
    if spec.scheduling.kueue_priority_class and not spec.scheduling.kueue_queue:
        problems.append(KUEUE_PRIORITY_NEEDS_QUEUE)
    if spec.scheduling.topology and not spec.scheduling.kueue_queue:
        problems.append(TOPOLOGY_NEEDS_QUEUE)
    if spec.scheduling.kueue_queue and spec.scheduling.volcano_queue:
        problems.append("set at most one of scheduling.kueueQueue and scheduling.volcanoQueue: "
                        "Kueue admits the job and Volcano gang-schedules it; use one queue system")
    return problems + backend_problems(spec, spec.trainer.backend)


def cluster_problems(spec: VitaTrainingRunSpec) -> list[str]:
    """What a run on a cluster must also satisfy (spec.CLUSTER_RULES, which the CRD checks at apply)."""
    problems = []
    checkpoints = spec.volumes.checkpoints
    if checkpoints is None:
        problems.append(NO_CHECKPOINT_VOLUME)
    if ".." in spec.output.split("/"):
        problems.append(OUTPUT_ESCAPES)
    if posixpath.isabs(spec.output) and checkpoints and \
            not (spec.output + "/").startswith(checkpoints.mount_path + "/"):
        problems.append(OUTPUT_OUTSIDE)
    return problems


def stage_max_length(spec: VitaTrainingRunSpec, index: int) -> int:
    """The sequence length the stage trains with: its args, else its preset's, else the recipe's default."""
    stage = spec.stages[index]
    value = stage.args.get("model_max_length", get_preset(stage.preset).training.get("model_max_length"))
    return int(value) if value is not None else MODEL_MAX_LENGTH


def backend_problems(spec: VitaTrainingRunSpec, backend: str | None) -> list[str]:
    """What the job backend cannot carry. The CRD checks it when the run names its backend; the operator again
    with the backend it resolved (its default) for runs that don't."""
    if backend != "trainjob":
        return []
    problems = [TRAINJOB_VOLCANO] if spec.scheduling.volcano_queue else []
    if spec.resources.priority_class_name or any(s.resources and s.resources.priority_class_name
                                                 for s in spec.stages):
        problems.append(TRAINJOB_PRIORITY)
    return problems


def stage_args(spec: VitaTrainingRunSpec, index: int, roots: PathRoots) -> list[str]:
    """Trainer command-line arguments for one stage (without the launcher)."""
    problems = check_spec(spec)
    if problems:
        raise ConfigError("run spec is not runnable:\n  " + "\n  ".join(problems))
    stage = spec.stages[index]
    base, partial_files = stage_inputs(spec, index, roots)
    args = ["--stage", get_preset(stage.preset).name, "--stage_name", stage.name,
            "--model_name_or_path", base,
            "--tokenizer_name_or_path", spec.model.tokenizer if spec.model.tokenizer == "qwen2.5"
            else resolve_path(roots.data, spec.model.tokenizer),
            "--data_registry", resolve_path(roots.data, spec.data.registry),
            "--dataset_use", stage.dataset_use,
            "--output_dir", stage_output_dir(spec, index, roots),
            "--metrics_port", str(spec.trainer.metrics_port)]
    if stage.eval_dataset_use:
        args += ["--eval_dataset_use", stage.eval_dataset_use]
    if stage.eval_holdout:
        args += ["--eval_holdout", str(stage.eval_holdout)]
    if partial_files:
        args += ["--init_weights", *partial_files]
    if base == resolve_path(roots.data, spec.model.base):  # the base's towers and projector (the trainer checks them)
        for flag, value in (("--vision_tower", spec.model.vision_tower), ("--audio_encoder", spec.model.audio_encoder)):
            if value:
                args += [flag, resolve_path(roots.data, value)]
        if spec.model.mm_projector_type:
            args += ["--mm_projector_type", spec.model.mm_projector_type]
    if spec.trainer.deepspeed != "none":
        args += ["--deepspeed", spec.trainer.deepspeed]
    if "ddp_timeout" not in stage.args:
        # A dead peer ends the job in minutes instead of the trainer's 2-hour collective timeout.
        args += ["--ddp_timeout", str(spec.trainer.collective_timeout_seconds)]
    if spec.fabric.min_bus_bandwidth_gbps and stage_resources(spec, index).nodes > 1:
        args += ["--min_bus_bandwidth_gbps", f"{spec.fabric.min_bus_bandwidth_gbps:g}"]
    for key, arg in stage.args.items():
        args += [f"--{key}", str(arg)]
    return args


def nproc_per_node(spec: VitaTrainingRunSpec, index: int) -> int:
    r = stage_resources(spec, index)
    return r.gpus_per_node if r.gpus_per_node > 0 else r.cpu_procs_per_node
