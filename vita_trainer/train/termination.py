"""The stage's result as a Kubernetes termination message, so the operator can report it without the PVC.

The kubelet mounts /dev/termination-log into every container and copies what is written there (at most 4 KiB)
into the pod's status. Outside Kubernetes the file does not exist and nothing is written.
Torch-free: the operator imports this module to read the message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

PATH_ENV = "VITA_TERMINATION_MESSAGE_PATH"
DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def termination_message(summary: dict) -> str:
    msg = {"stage": summary.get("stage"), "globalStep": summary.get("global_step"),
           "finalLoss": _finite(summary.get("final_loss"))}
    return json.dumps(msg, separators=(",", ":"))[:MAX_BYTES]


def final_loss_of(message: str) -> float | None:
    """The reader's side (the operator): finalLoss from a message, None if it is not ours (e.g. a log tail)."""
    try:
        return _finite(json.loads(message or "").get("finalLoss"))
    except (ValueError, AttributeError):
        return None


def write_termination_message(summary: dict) -> bool:
    path = Path(os.environ.get(PATH_ENV, DEFAULT_PATH))
    if not path.is_file():  # not in a pod (the kubelet creates the file); never create it ourselves
        return False
    path.write_text(termination_message(summary))
    return True
