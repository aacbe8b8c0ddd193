"""Live progress of a run's current stage, from its rank-0 trainer's Prometheus endpoint. Pure: parsing the
exposition, the ETA and GPU-hour arithmetic, and the hang rule; progress_loop.py fetches and writes.

status.progress: {stage, job, step, totalSteps, percent, summary, samplesPerSecond, tokensPerSecond, eta, etaSeconds,
gpuHoursSoFar, gpuHoursEstimate, evalLoss, updateTime, lastStepTime, firstSeen: {step, time}, stale}.
"""

from __future__ import annotations

from typing import Any

from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

# Trainer gauge (vita_trainer/train/metrics.py) -> progress field.
GAUGES = {"vita_train_global_step": "step", "vita_train_max_steps": "totalSteps",
          "vita_train_samples_per_second": "samplesPerSecond", "vita_train_tokens_per_second": "tokensPerSecond"}
# The validation loss over all samples (the trainer also labels one per modality).
EVAL_LOSS = ("vita_train_eval_loss", "all")


def parse_time(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if value else None


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_exposition(text: str, stage: str) -> dict[str, Any]:
    """The stage's gauges from the trainer's /metrics text (samples labelled with another stage are ignored)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") != stage:
                continue
            if (sample.name, sample.labels.get("modality")) == EVAL_LOSS:
                out["evalLoss"] = sample.value
            elif field := GAUGES.get(sample.name):
                out[field] = sample.value
    return out


# The initializer's gauges (vita_trainer/tools/initialize.py serves them while it downloads).
INIT_BYTES, INIT_EXPECTED = "vita_init_bytes", "vita_init_expected_bytes"


def download_progress(text: str, now: datetime) -> dict[str, Any] | None:
    """status.initializers.progress from the initializer's /metrics text; None when it serves neither gauge."""
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name in (INIT_BYTES, INIT_EXPECTED)}
    if INIT_BYTES not in values or INIT_EXPECTED not in values:
        return None
    done, expected = int(values[INIT_BYTES]), int(values[INIT_EXPECTED])
    return {"bytes": done, "expectedBytes": expected,
            "percent": min(100, done * 100 // expected) if expected else 100, "updateTime": format_time(now)}


def format_duration(seconds: float) -> str:
    """kubectl's style: 45s, 12m30s, 3h05m, 2d4h."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def eta_seconds(step: int, total: int, first_step: int, first_time: datetime | None, now: datetime) -> float | None:
    """Remaining steps at the average pace since this job was first seen; None until a step has passed."""
    if total <= 0 or step <= first_step or first_time is None:
        return None
    per_step = (now - first_time).total_seconds() / (step - first_step)
    return max(total - step, 0) * per_step


def next_progress(previous: dict[str, Any] | None, gauges: dict[str, Any], *, stage: str, job: str, now: datetime,
                  stage_start: datetime | None, gpus: int) -> dict[str, Any]:
    """The new status.progress from one scrape. The pace and the time of the last step change carry over while
    the job stays the same; a new job (the next stage, or a retry) starts its own window."""
    prev = previous if previous and previous.get("job") == job else {}
    step, total = int(gauges.get("step", 0)), int(gauges.get("totalSteps", 0))
    first = prev.get("firstSeen") or {"step": step, "time": format_time(now)}
    moved = step != prev.get("step")
    last_step_time = format_time(now) if moved or not prev.get("lastStepTime") else prev["lastStepTime"]
    out = {"stage": stage, "job": job, "step": step, "totalSteps": total,
           "percent": int(100 * step / total) if total else 0,
           "summary": f"{step}/{total} ({int(100 * step / total)}%)" if total else f"{step}/?",
           "samplesPerSecond": round(float(gauges.get("samplesPerSecond", 0.0)), 2),
           "tokensPerSecond": round(float(gauges.get("tokensPerSecond", 0.0)), 1),
           "updateTime": format_time(now), "lastStepTime": last_step_time, "firstSeen": first, "stale": False}
    if "evalLoss" in gauges:
        out["evalLoss"] = round(float(gauges["evalLoss"]), 4)
    eta = eta_seconds(step, total, int(first["step"]), parse_time(first["time"]), now)
    if eta is not None:
        out.update(etaSeconds=int(eta), eta=format_duration(eta))
    if gpus and stage_start is not None:
        so_far = gpus * max((now - stage_start).total_seconds(), 0.0) / 3600
        out["gpuHoursSoFar"] = round(so_far, 2)
        if eta is not None:
            out["gpuHoursEstimate"] = round(so_far + gpus * eta / 3600, 2)
    return out


def stale_progress(previous: dict[str, Any] | None, job: str, now: datetime, why: str) -> dict[str, Any]:
    """The endpoint did not answer: keep what was known, say it is stale; nothing else changes."""
    kept: dict[str, Any] = dict(previous) if previous and previous.get("job") == job else {"job": job}
    kept.update(stale=True, staleReason=why[:200], updateTime=format_time(now))
    return kept


# Fields that follow the clock, not the trainer: a reading that differs only in these is not written.
CLOCK_FIELDS = frozenset({"updateTime", "eta", "etaSeconds", "gpuHoursSoFar", "gpuHoursEstimate"})


def worth_writing(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether a reading says something status does not: a step, a rate, a loss, a new job, the endpoint answering
    or not. A stuck or unreachable trainer's readings are written once, not every interval."""
    def said(p: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (p or {}).items() if k not in CLOCK_FIELDS}
    return said(old) != said(new)


def as_merge_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """`new` as a JSON merge patch over `old`: the fields `new` no longer has are set to null (deleted), so a new
    job's progress never shows the previous job's ETA or step. Nested objects (firstSeen) are replaced whole."""
    patch: dict[str, Any] = {k: None for k in (old or {}) if k not in new}
    patch.update({k: ({**{f: None for f in (old or {}).get(k) or {}}, **v} if isinstance(v, dict) else v)
                  for k, v in new.items()})
    return patch


def hang_reason(progress: dict[str, Any] | None, job: str, now: datetime, timeout_seconds: int | None,
                since: str | None = None, not_before: datetime | None = None) -> str:
    """Why `job` counts as hung, on fresh evidence only: successful reads of its endpoint (progress not stale; its
    updateTime is the latest such read) show no step for the timeout, counted from the latest of the last step
    seen, `since` (the job's latest admission: a job Kueue re-admitted restarts the clock) and `not_before` (when
    this operator process started: an outage is not the trainer's). A failed read (stale progress) or no read
    since then is never a hang: the trainer may be fine behind a NetworkPolicy or a CNI fault; the progress says
    stale and is alerted on. "" when it is not hung, or when hang detection is off."""
    if not timeout_seconds or not progress or progress.get("job") != job or progress.get("stale"):
        return ""
    read = parse_time(progress.get("updateTime"))
    start = max((t for t in (parse_time(progress.get("lastStepTime")), parse_time(since), not_before) if t),
                default=None)
    if read is None or start is None:
        return ""
    quiet = (min(now, read) - start).total_seconds()
    if quiet < timeout_seconds:
        return ""
    return (f"no training step for {format_duration(quiet)} (step {progress['step']}; "
            f"hangTimeoutSeconds {timeout_seconds})")
