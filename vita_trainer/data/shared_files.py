"""Files that several runs write on one shared volume (the dataset volume's registry.yaml): read, changed and
written back under an exclusive lock, replaced atomically, so concurrent writers keep each other's changes and a
reader never sees half a file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock`, held while the block runs. POSIX record locks (fcntl/lockf) are what NFS
    (NLM, NFSv4) and most network filesystems arbitrate between hosts; flock is not, on every client."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def replace_atomically(path: Path, text: str) -> None:
    """Write beside `path`, flush to disk, then rename over it: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def update_text(path: Path, change: Callable[[str | None], str]) -> None:
    """`change(current text, or None if the file does not exist)` -> the new text, under the lock."""
    with exclusive(path):
        current = path.read_text() if path.is_file() else None
        replace_atomically(path, change(current))
