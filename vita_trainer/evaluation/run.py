"""`vita-model eval MODEL --tasks ...`: lmms-eval's tasks on a VITA folder, and the operator's evaluation job.

lmms-eval computes every score (its task definitions and metrics); this module picks its tasks, runs them with
the `vita_folder` model class, writes lmms-eval's full results next to the model, and reduces them to
{task: {metric: value}} for the console and the pod's termination message (what the operator puts in status).
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from typing import Any

from vita_api.errors import ConfigError
from vita_api.termination import evaluation_message, write_message


def task_manager(include_path: str | None) -> Any:
    from lmms_eval.tasks import TaskManager
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path} is not a folder of lmms-eval task YAMLs")
    return TaskManager("WARNING", include_path=include_path)


def check_tasks(tasks: list[str], manager: Any) -> None:
    """Unknown task names fail before the model loads, with the closest known names."""
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
        raise ConfigError("unknown lmms-eval task(s): " + "; ".join(
            f"{t}" + (f" (did you mean {', '.join(h)}?)" if h else "") for t, h in hints.items()) +
            ". `python -m lmms_eval --tasks list` lists them; local tasks need --include-path")


def scores_of(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lmms-eval's results[task] has "metric,filter" keys (and their "_stderr" twins, and an alias): the finite
    metric values, named by metric (and filter, when it is not "none")."""
    out: dict[str, dict[str, float]] = {}
    for task, values in (results.get("results") or {}).items():
        row = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                continue
            row[metric if filt == "none" else f"{metric}/{filt}"] = float(value)
        if row:
            out[task] = row
    return out


def evaluate(model: str, tasks: list[str], *, base: str | None = None, include_path: str | None = None,
             limit: float | None = None, output: str | None = None, device: str = "auto",
             system: str | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    from lmms_eval.evaluator import simple_evaluate
    from .lmms_model import VitaFolder
    manager = task_manager(include_path)
    check_tasks(tasks, manager)
    lm = VitaFolder(pretrained=model, base=base, device=device, system=system)
    # bootstrap_iters=0: no stderr resampling (minutes on large tasks; the scores themselves do not change)
    results = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=manager, log_samples=bool(output),
                              bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    if results is None:
        raise RuntimeError("lmms-eval returned no results")
    scores = scores_of(results)
    if output:
        folder = Path(output)
        folder.mkdir(parents=True, exist_ok=True)
        samples = results.pop("samples", None) or {}
        for task, rows in samples.items():
            with open(folder / f"samples_{task}.jsonl", "w") as f:
                for row in rows:
                    f.write(json.dumps(row, default=str) + "\n")
        (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (folder / "scores.json").write_text(json.dumps(scores, indent=2))
    write_message(evaluation_message(scores, str(Path(output) / "results.json") if output else ""))
    return scores


def print_scores(scores: dict[str, dict[str, float]]) -> None:
    width = max((len(t) for t in scores), default=4)
    for task, row in scores.items():
        for metric, value in row.items():
            print(f"{task:<{width}}  {metric:<20} {value:.4f}")
