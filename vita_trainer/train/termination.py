"""The stage's result as a Kubernetes termination message, so the operator can report it without the PVC.

The kubelet mounts /dev/termination-log into every container and copies what is written there (at most 4 KiB)
into the pod's status. Outside Kubernetes the file does not exist and nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

PATH_ENV = "VITA_TERMINATION_MESSAGE_PATH"
DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096


def termination_message(summary: dict) -> str:
    loss = summary.get("final_loss")
    msg = {"stage": summary.get("stage"), "globalStep": summary.get("global_step"),
           "finalLoss": loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None}
    return json.dumps(msg, separators=(",", ":"))[:MAX_BYTES]


def write_termination_message(summary: dict) -> bool:
    path = Path(os.environ.get(PATH_ENV, DEFAULT_PATH))
    if not path.is_file():  # not in a pod (the kubelet creates the file); never create it ourselves
        return False
    path.write_text(termination_message(summary))
    return True
