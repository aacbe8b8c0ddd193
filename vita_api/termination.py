"""The stage's result as a Kubernetes termination message, so the operator can report it without the PVC.

The kubelet mounts /dev/termination-log into every container and copies what is written there (at most 4 KiB)
into the pod's status. Outside Kubernetes the file does not exist and nothing is written.
Torch-free: the operator imports this module to read the message.
"""

from __future__ import annotations

from typing import Any

import json
import math
import os
from pathlib import Path

PATH_ENV = "VITA_TERMINATION_MESSAGE_PATH"
DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096


def _finite(x: object) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def termination_message(summary: dict[str, Any]) -> str:
    msg = {"stage": summary.get("stage"), "globalStep": summary.get("global_step"),
           "finalLoss": _finite(summary.get("final_loss"))}
    if (eval_loss := _finite(summary.get("eval_loss"))) is not None:  # a stage with validation data
        msg["evalLoss"] = eval_loss
    if fabric := summary.get("fabric"):  # a stage that probed its collectives (train/fabric.py)
        msg["fabric"] = {"transport": fabric["transport"], "busBandwidthGBps": fabric["bus_bandwidth_gbps"]}
    return json.dumps(msg, separators=(",", ":"))[:MAX_BYTES]


def _number_in(message: str, key: str) -> float | None:
    try:
        return _finite(json.loads(message or "").get(key))
    except (ValueError, AttributeError):
        return None


def final_loss_of(message: str) -> float | None:
    """The reader's side (the operator): finalLoss from a message, None if it is not ours (e.g. a log tail)."""
    return _number_in(message, "finalLoss")


def eval_loss_of(message: str) -> float | None:
    """The stage's final validation loss from a message; None when it had no validation data."""
    return _number_in(message, "evalLoss")


def fabric_of(message: str) -> dict[str, Any] | None:
    """The stage's fabric probe (transport, busBandwidthGBps) from a message; None when it did not probe."""
    found = _object_at(message, "fabric")
    if not found or not isinstance(found.get("transport"), str) or \
            not isinstance(found.get("busBandwidthGBps"), (int, float)):
        return None
    return {"transport": found["transport"], "busBandwidthGBps": float(found["busBandwidthGBps"])}


# Exit codes, one convention for the trainer and every CLI (vita-train, vita-data, vita-model):
#   0 done; 1 the command ran and found problems (vita-data check), or any crash; 2 a VitaError or a usage error
#   (argparse's own code): bad config or data, another attempt cannot help, or a `vita-train local` stage that
#   failed (its message carries the trainer's reason); 3 out of GPU memory (the trainer), so
#   that even a reader without the termination message (a log, a local run) can tell. Signals are 128+.
EXIT_PROBLEMS_FOUND = 1
EXIT_VITA_ERROR = 2
EXIT_OUT_OF_MEMORY = 3


def failure_message(kind: str, error: str, retryable: bool, **details: Any) -> str:
    return json.dumps({"error": kind, "message": error[:MAX_BYTES - 300], "retryable": retryable, **details},
                      separators=(",", ":"))


def oom_of(message: str) -> dict[str, Any] | None:
    """The reader's side of an out-of-memory failure: {"step", "perDeviceTrainBatchSize",
    "gradientAccumulationSteps"} as the failed attempt ran, else None."""
    return _object_at(message, "outOfMemory")


def _object_at(message: str, key: str) -> dict[str, Any] | None:
    """The JSON object under `key` of a message, or None when the message is not JSON or has none."""
    try:
        msg = json.loads(message or "")
    except ValueError:
        return None
    value = msg.get(key) if isinstance(msg, dict) else None
    return value if isinstance(value, dict) else None


def preflight_summary_of(message: str) -> dict[str, Any] | None:
    """The reader's side of a finished preflight pod's message (tools/preflight.py): per-stage counts, problems per
    reason, the first problems and where the full report is; None if the message is not one."""
    return json.loads(message) if _object_at(message, "preflight") is not None else None


def evaluation_message(scores: dict[str, dict[str, float]], results_path: str) -> str:
    """An evaluation pod's message: {task: {metric: value}} and where lmms-eval's full results are. Tasks that do
    not fit in 4 KiB are left out and counted in "omitted" (the results file has them all)."""
    out: dict[str, Any] = {"evaluation": {}, "results": results_path}
    for task, row in scores.items():
        candidate = {**out, "evaluation": {**out["evaluation"], task: row}}
        if len(json.dumps(candidate, separators=(",", ":")).encode()) > MAX_BYTES - 64:
            out["omitted"] = out.get("omitted", 0) + 1
            continue
        out = candidate
    return json.dumps(out, separators=(",", ":"))


def evaluation_of(message: str) -> dict[str, Any] | None:
    """The reader's side: {"evaluation": {task: {metric: value}}, "results": path, ...}; None if not one."""
    found = _object_at(message, "evaluation")
    if found is None:
        return None
    scores = {str(t): {str(m): v for m, v in row.items() if _finite(v) is not None}
              for t, row in found.items() if isinstance(row, dict)}
    return {**json.loads(message), "evaluation": scores}


def initialized_of(message: str) -> dict[str, Any] | None:
    """The reader's side of an initializer pod's message (vita_trainer/tools/initialize.py): {"files", "bytes",
    "transferred", "items"}; None if the message is not one."""
    return _object_at(message, "initialized")


def failure_of(message: str, *, permanent_only: bool = False) -> str | None:
    """The reader's side of a failure message: "<kind>: <message>", or None when the message is not one (a
    result, a log tail). `permanent_only`: only when the trainer said another attempt cannot help."""
    try:
        msg = json.loads(message or "")
    except ValueError:
        return None
    if not isinstance(msg, dict) or "error" not in msg or (permanent_only and msg.get("retryable") is not False):
        return None
    return f"{msg['error']}: {msg.get('message', '')}"


def permanent_failure_of(message: str) -> str | None:
    return failure_of(message, permanent_only=True)


def write_message(text: str) -> bool:
    path = Path(os.environ.get(PATH_ENV, DEFAULT_PATH))
    if not path.is_file():  # not in a pod (the kubelet creates the file); never create it ourselves
        return False
    path.write_text(text)
    return True


def write_termination_message(summary: dict[str, Any]) -> bool:
    return write_message(termination_message(summary))


def write_failure(kind: str, error: str, retryable: bool, **details: Any) -> bool:
    return write_message(failure_message(kind, error, retryable, **details))
