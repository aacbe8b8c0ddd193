"""`vita-train local RUN.yaml`: every stage of a VitaTrainingRun in sequence on this machine (torchrun)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vita_api.errors import ConfigError, StageFailed
from vita_api.spec import VitaTrainingRun, load_run
from vita_api.oom import after_oom
from vita_api.plan import (STAGE_DONE_FILE, PathRoots, check_spec, evaluated_stages, evaluation_args, evaluation_dir,
                          export_args, export_dir, nproc_per_node, resolve_path, stage_args, stage_inputs,
                          stage_output_dir, with_stage_args)
from vita_api.termination import failure_of, oom_of
from vita_api.termination import PATH_ENV as TERMINATION_PATH_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preflight(run: VitaTrainingRun, roots: PathRoots) -> list[str]:
    """Everything that can be checked before any training starts."""
    from .data.registry import load_registry
    spec = run.spec
    problems = check_spec(spec)
    base, _ = stage_inputs(spec, 0, roots)
    if not (Path(base) / "config.json").is_file():
        problems.append(f"model.base {base} is not a model folder (no config.json)")
    try:
        registry = load_registry(resolve_path(roots.data, spec.data.registry))
        for i, stage in enumerate(spec.stages):
            try:
                for _, ds in [d for key in (stage.dataset_use, stage.eval_dataset_use) if key
                              for d in registry.mixture(key)]:
                    if not registry.resolve(ds.chat_path).is_file():
                        problems.append(f"stages[{i}] ({stage.name}): chat file {registry.resolve(ds.chat_path)} "
                                        f"missing")
            except ConfigError as e:
                problems.append(f"stages[{i}] ({stage.name}): {e}")
    except ConfigError as e:
        problems.append(str(e))
    return problems


def run_local(path: str | Path, nproc: int | None = None, root: str | Path | None = None) -> list[dict]:
    """Every stage in order. The run's relative paths (data, models, outputs) resolve against `root`: on a
    cluster, the volumes' mount points; here one folder, by default the run file's own."""
    path = Path(path).resolve()
    run = load_run(path)
    base = str(Path(root).resolve()) if root else str(path.parent)
    roots = PathRoots(data=base, checkpoints=base)
    problems = preflight(run, roots)
    if problems:
        raise ConfigError(f"{path} cannot run:\n  " + "\n  ".join(problems))
    summaries = []
    for i, stage in enumerate(run.spec.stages):
        out = Path(stage_output_dir(run.spec, i, roots))
        done = out / STAGE_DONE_FILE
        if done.is_file():
            print(f"[local] stage {i + 1}/{len(run.spec.stages)} {stage.name}: already done, skipping", flush=True)
        else:
            run_stage(run.spec, i, roots, nproc or nproc_per_node(run.spec, i),
                      f"{path} --root {root}" if root else str(path))
        summary = json.loads(done.read_text())
        summaries.append(summary)
        plot_losses(summary, out / "loss.png")
        if i in evaluated_stages(run.spec):
            evaluate_stage(run.spec, i, roots)
    if run.spec.export is not None:
        export_run(run.spec, roots)
    print(format_summary(summaries), flush=True)
    return summaries


def export_run(spec, roots: PathRoots) -> None:
    """spec.export, as the operator's export Job runs it (`vita-model export`, in its own process)."""
    folder = Path(export_dir(spec, roots))
    if (folder / "config.json").is_file():
        print(f"[local] export: already there ({folder})", flush=True)
        return
    print(f"[local] export: {spec.export.format} to {folder}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "vita_trainer.tools.model_cli", *export_args(spec, roots)])
    if proc.returncode:
        raise StageFailed(f"the export to {folder} failed (exit {proc.returncode}, see above); every stage "
                          f"succeeded and its output is in place")


def evaluate_stage(spec, index: int, roots: PathRoots) -> None:
    """spec.evaluation's benchmarks on a finished stage, as the operator's evaluation Job runs them (`vita-model
    eval`, in its own process); done once (its scores.json). A failure is said, not raised: the stage trained."""
    stage = spec.stages[index].name
    scores = Path(evaluation_dir(spec, index, roots)) / "scores.json"
    if scores.is_file():
        print(f"[local] benchmarks after stage {stage}: already done ({scores})", flush=True)
        return
    print(f"[local] benchmarks after stage {stage}: {', '.join(spec.evaluation.tasks)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "vita_trainer.tools.model_cli",
                           *evaluation_args(spec, index, roots)])
    if proc.returncode:
        print(f"[local] WARNING: the benchmarks after stage {stage} failed (exit {proc.returncode}, see above); "
              f"the stage itself succeeded", flush=True)


def run_stage(spec, index: int, roots: PathRoots, nproc: int, rerun: str) -> None:
    """One stage with torchrun; out of GPU memory, it is retried as the operator does (vita_api/oom.py)."""
    stage, overrides = spec.stages[index], {}
    done = Path(stage_output_dir(spec, index, roots)) / STAGE_DONE_FILE
    while True:
        with tempfile.TemporaryDirectory() as tmp:
            message = Path(tmp) / "termination-log"  # the trainer writes its result here, as in a pod
            message.touch()
            # A free port for /metrics, as for the rendezvous: the spec's metricsPort is the pod's, and two local
            # runs (or anything else on this machine) may hold it here. The last --metrics_port wins.
            metrics_port = free_port()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   "-m", "vita_trainer.train", *stage_args(with_stage_args(spec, index, overrides), index, roots),
                   "--metrics_port", str(metrics_port)]
            print(f"[local] stage {index + 1}/{len(spec.stages)} {stage.name} ({stage.preset}) on {nproc} "
                  f"process(es){' with ' + str(overrides) if overrides else ''}; metrics at "
                  f"http://127.0.0.1:{metrics_port}/metrics", flush=True)
            proc = subprocess.run(cmd, env={**os.environ, TERMINATION_PATH_ENV: str(message)})
            # torchrun exits 1 whatever its workers did; the trainer's message says what happened
            report = message.read_text() if proc.returncode else ""
            oom = oom_of(report)
        if oom and stage.oom_policy == "adjust":
            overrides = after_oom(oom["perDeviceTrainBatchSize"], oom["gradientAccumulationSteps"]) or {}
            if overrides:
                print(f"[local] stage {stage.name} ran out of memory at step {oom['step']}; retrying from the last "
                      f"checkpoint with {overrides}", flush=True)
                continue
        if proc.returncode != 0 or not done.is_file():
            said = failure_of(report)
            raise StageFailed(f"stage {stage.name} failed (exit {proc.returncode})"
                              f"{': ' + said if said else ', see the log above'}; fix it and rerun "
                              f"`vita-train local {rerun}`: finished stages are skipped and this one resumes "
                              f"from its last checkpoint")
        return


def plot_losses(summary: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not summary.get("losses"):
        return
    steps, losses = zip(*summary["losses"])
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, losses)
    ax.set(title=f"{summary['stage']} ({summary['preset']})", xlabel="step", ylabel="loss")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def format_summary(summaries: list[dict]) -> str:
    rows = [f"{'stage':<18}{'preset':<16}{'steps':>6}{'first loss':>12}{'final loss':>12}{'seconds':>9}  trains"]
    for s in summaries:
        fl = f"{s['first_loss']:.4f}" if s.get("first_loss") is not None else "-"
        ll = f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "-"
        rows.append(f"{s['stage']:<18}{s['preset']:<16}{s['global_step']:>6}{fl:>12}{ll:>12}{s['seconds']:>9}  "
                    f"{','.join(s['trainable'])}")
    return "\n".join(rows)
