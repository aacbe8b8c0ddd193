"""The wall clock, as the state machine records it."""

from __future__ import annotations

from datetime import datetime, timezone


# When this operator process started: the hang rule counts no silence from before it (core/progress.hang_reason).
STARTED = datetime.now(timezone.utc)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
