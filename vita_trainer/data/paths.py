"""Resolve a sample's media path under its root, refusing escapes (../, absolute paths) and symlink loops."""

from __future__ import annotations

from pathlib import Path

from vita_api.errors import DataError


def resolve_media(root: Path, rel: str, *, file: str, sample_id: str, field: str) -> Path:
    root = Path(root)
    try:
        resolved = (root / rel).resolve()
        base = root.resolve()
    except (RuntimeError, OSError) as e:  # Python raises RuntimeError on symlink loops
        raise DataError(f"{root / rel}: {e}", file=file, sample_id=sample_id, field=field, reason="symlink_loop",
                        hint="fix the symlink") from e
    if not resolved.is_relative_to(base):
        raise DataError(f"{rel!r} resolves to {resolved}, outside the media root {base}", file=file,
                        sample_id=sample_id, field=field, reason="path_escape",
                        hint="media paths must stay under their registry folder")
    if not resolved.exists():
        raise DataError(MISSING.format(path=root / rel), file=file, sample_id=sample_id, field=field,
                        reason="missing_file", hint="fix the path or drop the sample (vita-data check --write-clean)")
    return resolved


MISSING = "file {path} does not exist"


def missing_path(message: str) -> str | None:
    """The path of a missing_file problem's message (MISSING), None for another message."""
    head, _, tail = MISSING.partition("{path}")
    return message[len(head):-len(tail)] if message.startswith(head) and message.endswith(tail) else None
