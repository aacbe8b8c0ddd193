"""`vita-model download`: the guide's pretrained parts (by name) or any Hugging Face repo, into the folders the
README's commands and the example runs expect.

Through `huggingface_hub` (HF_TOKEN, HF_ENDPOINT mirrors, its own resume of interrupted files and size checks); the
revision is resolved to a commit first, every LFS file's sha256 as the Hub lists it is checked after the transfer,
and a marker records the commit: a second download of the same revision transfers nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vita_api.errors import ConfigError
from .download import DownloadError, MARKERS, file_sha256, human

CATALOGUE = Path(__file__).with_name("model_sources.yaml")


class ModelSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    into: str = Field(description="Folder under the download root ('.' for the root itself)")
    revision: str = "main"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    description: str = ""
    licence: str = "see the model card"


def catalogue(path: Path = CATALOGUE) -> dict[str, ModelSource]:
    try:
        return {k: ModelSource.model_validate(v) for k, v in yaml.safe_load(path.read_text())["models"].items()}
    except (OSError, KeyError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"model catalogue {path} is invalid: {e}") from e


def resolve(name: str, revision: str | None, include: list[str], exclude: list[str]) -> ModelSource:
    """A catalogue name, or any repo id "owner/name" (into a folder named after it)."""
    known = catalogue()
    if name in known:
        src = known[name]
    elif "/" in name:
        try:
            src = ModelSource(repo=name, into=name.split("/")[-1])
        except ValidationError as e:
            raise ConfigError(f"{name!r} is not a Hugging Face repo id (owner/name)") from e
    else:
        raise ConfigError(f"unknown model {name!r}: give one of {', '.join(sorted(known))}, or a repo id owner/name")
    return src.model_copy(update={"revision": revision or src.revision, "include": include or src.include,
                                  "exclude": exclude or src.exclude})


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None   # an LFS file's, as the Hub lists it; None for small git files (their size is checked)


def listing(src: ModelSource) -> tuple[str, list[RemoteFile]]:
    """(the revision's commit, the files the patterns select)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects
    api = HfApi()
    try:
        commit = api.repo_info(src.repo, revision=src.revision).sha
        files = [f for f in api.list_repo_tree(src.repo, recursive=True, revision=commit) if isinstance(f, RepoFile)]
    except HfHubHTTPError as e:
        raise DownloadError(f"{src.repo}@{src.revision}: {e}; for a gated or private repo set HF_TOKEN, behind a "
                            f"firewall set HF_ENDPOINT to a mirror") from e
    chosen = filter_repo_objects(files, allow_patterns=src.include or None, ignore_patterns=src.exclude or None,
                                 key=lambda f: f.path)
    return str(commit), [RemoteFile(f.path, f.lfs.size if f.lfs else f.size, f.lfs.sha256 if f.lfs else None)
                         for f in chosen]


def marker(root: Path, src: ModelSource) -> Path:
    return root / MARKERS / "models" / f"{src.repo.replace('/', '--')}--{src.into.replace('/', '--')}.json"


def _done(root: Path, src: ModelSource, commit: str, files: list[RemoteFile]) -> bool:
    m = marker(root, src)
    if not m.is_file():
        return False
    rec = json.loads(m.read_text())
    return rec.get("commit") == commit and rec.get("include") == src.include and rec.get("exclude") == src.exclude \
        and all((root / src.into / f.path).is_file() for f in files)


def verify(folder: Path, files: list[RemoteFile]) -> None:
    """Every file at its listed size, and every LFS file at its listed sha256; a bad one is removed (rerun)."""
    for f in files:
        path = folder / f.path
        problem = ("missing" if not path.is_file() else
                   f"{path.stat().st_size} bytes, the Hub lists {f.size}" if path.stat().st_size != f.size else
                   "sha256 differs from the Hub's" if f.sha256 and file_sha256(path) != f.sha256 else "")
        if problem:
            path.unlink(missing_ok=True)
            raise DownloadError(f"{path}: {problem}; the file was removed, rerun to fetch it again")


def download_model(root: Path, src: ModelSource, *, dry_run: bool = False, out=None) -> dict:
    from huggingface_hub import snapshot_download
    out = out or sys.stdout
    commit, files = listing(src)
    if not files:
        raise ConfigError(f"{src.repo}@{src.revision}: no file matches include {src.include} / exclude "
                          f"{src.exclude}")
    folder = root / src.into
    total = sum(f.size for f in files)
    print(f"{src.repo}@{commit[:12]} -> {folder}  ({len(files)} files, {human(total)}; licence {src.licence})",
          file=out)
    if _done(root, src, commit, files):
        print(f"  already there (commit {commit[:12]}): nothing to fetch", file=out)
        return {"commit": commit, "files": len(files), "bytes": total, "transferred": 0, "folder": str(folder)}
    for f in files:
        print(f"  {f.path:<70}{human(f.size):>10}", file=out)
    if dry_run:
        return {"commit": commit, "files": len(files), "bytes": total, "transferred": 0, "folder": str(folder)}
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < total:
        raise ConfigError(f"{root} has {human(free)} free but {src.repo} needs {human(total)}")
    snapshot_download(src.repo, revision=commit, local_dir=folder, allow_patterns=src.include or None,
                      ignore_patterns=src.exclude or None)
    verify(folder, files)
    m = marker(root, src)
    m.parent.mkdir(parents=True, exist_ok=True)
    m.write_text(json.dumps({"repo": src.repo, "revision": src.revision, "commit": commit, "include": src.include,
                             "exclude": src.exclude, "files": len(files), "bytes": total}))
    print(f"  done: {folder} at commit {commit[:12]}", file=out)
    return {"commit": commit, "files": len(files), "bytes": total, "transferred": total, "folder": str(folder)}
