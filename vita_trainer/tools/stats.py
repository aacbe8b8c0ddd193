"""`vita-data stats`: counts by modality and dataset, and token / audio-duration / image-size histograms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vita_api.errors import DataError


def collect(chunk) -> list[dict]:
    """Per-sample facts from headers only (runs in a worker with its own processor)."""
    from ..data.facts import inspect_sample
    from .context import worker_processor
    proc = worker_processor()
    rows = []
    for file, index, raw in chunk:
        row = {"file": file, "dataset": Path(file).stem}
        try:
            facts = inspect_sample(proc, raw, file, index)
            s = facts.sample
            row.update(modality=s.media_label,
                       tokens=facts.tokens, audio_seconds=facts.audio_seconds, audio_tokens=facts.audio_tokens,
                       image_sizes=[list(size) for size in facts.image_sizes])
        except DataError as e:
            row.update(modality="invalid", error=e.reason)
        rows.append(row)
    return rows


def _hist(values, bins):
    if not values:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def write_report(rows: list[dict], out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    by_modality, by_dataset = {}, {}
    for r in rows:
        by_modality[r["modality"]] = by_modality.get(r["modality"], 0) + 1
        by_dataset.setdefault(r["dataset"], {}).setdefault(r["modality"], 0)
        by_dataset[r["dataset"]][r["modality"]] += 1
    tokens = [r["tokens"] for r in rows if "tokens" in r]
    seconds = [s for r in rows for s in r.get("audio_seconds", [])]
    audio_tokens = [t for r in rows for t in r.get("audio_tokens", [])]
    pixels = [max(w, h) for r in rows for w, h in r.get("image_sizes", [])]
    report = {"samples": len(rows), "by_modality": by_modality, "by_dataset": by_dataset,
              "tokens": {"mean": float(np.mean(tokens)) if tokens else 0.0, "max": max(tokens, default=0),
                         "p95": float(np.percentile(tokens, 95)) if tokens else 0.0},
              "audio_seconds": {"clips": len(seconds), "mean": float(np.mean(seconds)) if seconds else 0.0,
                                "hours": sum(seconds) / 3600},
              "audio_tokens": {"clips": len(audio_tokens), "total": sum(audio_tokens),
                               "mean": float(np.mean(audio_tokens)) if audio_tokens else 0.0,
                               "max": max(audio_tokens, default=0)},
              "histograms": {"tokens": _hist(tokens, 30), "audio_seconds": _hist(seconds, 30),
                             "image_longest_side": _hist(pixels, 30)}}
    (out / "stats.json").write_text(json.dumps(report, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, values, title in ((axes[0], tokens, "tokens per sample"), (axes[1], seconds, "audio seconds"),
                              (axes[2], pixels, "image longest side (px)")):
        if values:
            ax.hist(values, bins=30)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "stats.png", dpi=80)
    plt.close(fig)
    return report
