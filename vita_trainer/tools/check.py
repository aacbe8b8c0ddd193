"""`vita-data check`: every problem in a data set, per sample, before any GPU hour is spent.

By default it reads media headers only (Pillow's verify, soundfile's info, container metadata), so it is fast;
`--decode` decodes every image, clip and chosen video frame in full, which also finds a truncated JPEG, a cut WAV
or an MP4 whose frames do not decode. The token side uses the same `SampleProcessor.layout` as training, so
"truncated" and "fully masked" mean exactly what training would hit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..data.dataset import read_samples
from ..data.facts import inspect_sample
from vita_api.errors import DataError


@dataclass(frozen=True)
class Problem:
    file: str
    sample_id: str
    field: str
    reason: str
    message: str
    hint: str = ""      # how to fix it, when the error knows

    def line(self) -> str:
        text = f"{self.file}: sample {self.sample_id} [{self.field}] {self.reason}: {self.message}"
        return f"{text} -- fix: {self.hint}" if self.hint else text


def _problem(e: DataError, file: str, sample_id: str) -> Problem:
    return Problem(e.file or file, e.sample_id or sample_id, e.field or "", e.reason, e.detail, e.hint or "")


def check_sample(proc, raw, file: str, index: int, decode: bool = False) -> list[Problem]:
    sid = str(raw.get("id", f"#{index}")) if isinstance(raw, dict) else f"#{index}"
    try:
        inspect_sample(proc, raw, file, index, decode=decode)
    except DataError as e:
        return [_problem(e, file, sid)]
    return []


def load_chat_files(paths: list[Path]) -> tuple[list[tuple[str, int, object]], list[Problem]]:
    """(file, index, raw) for every sample, plus file-level problems (bad JSON, encoding, missing file)."""
    items, problems = [], []
    for path in paths:
        try:
            raws = read_samples(path)
        except DataError as e:
            problems.append(Problem(str(path), "-", "", e.reason, e.detail, e.hint or ""))
            continue
        if not isinstance(raws, list):
            problems.append(Problem(str(path), "-", "", "json", "top level must be a list of samples"))
            continue
        items.extend((str(path), i, raw) for i, raw in enumerate(raws))
    return items, problems


def summarise(problems: list[Problem], total: int) -> dict:
    by_reason: dict[str, int] = {}
    for p in problems:
        by_reason[p.reason] = by_reason.get(p.reason, 0) + 1
    bad = {(p.file, p.sample_id) for p in problems if p.sample_id != "-"}
    return {"samples": total, "bad_samples": len(bad), "problems_by_reason": dict(sorted(by_reason.items())),
            "problems": [asdict(p) for p in problems]}


def write_clean(items, problems: list[Problem], out_dir: Path) -> list[str]:
    """One cleaned JSON per input file, without the samples that have problems. Inputs are never touched."""
    bad = {(p.file, p.sample_id) for p in problems}
    out_dir.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list] = {}
    for file, index, raw in items:
        sid = str(raw.get("id", f"#{index}")) if isinstance(raw, dict) else f"#{index}"
        by_file.setdefault(file, [])
        if (file, sid) not in bad:
            by_file[file].append(raw)
    written = []
    for file, raws in by_file.items():
        dst = out_dir / (Path(file).stem + ".json")
        if dst.resolve() == Path(file).resolve():
            raise DataError(f"--write-clean would overwrite the input {file}; choose another folder")
        dst.write_text(json.dumps(raws, ensure_ascii=False, indent=1))
        written.append(str(dst))
    return written
