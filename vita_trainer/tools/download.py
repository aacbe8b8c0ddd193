"""`vita-data download`: the guide's datasets, resumable, verified, unpacked once, and a registry to check next.

Hugging Face files go through `huggingface_hub` (its own resume, HF_TOKEN, HF_ENDPOINT mirrors); plain HTTP(S) through
`fetch_url`: Range requests from the `.part` file, retries with backoff on dropped connections and 5xx, and the
size and sha256 checked before the rename, so a file under its final name is always complete. A zip is unpacked
into place, then a marker in <root>/.vita-download/ records the file as done; a rerun skips what is done and
resumes what is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from vita_api.errors import ConfigError, VitaError

from ..data.registry import with_audio_mixtures
from ..data.shared_files import update_text

SOURCES_FILE = Path(__file__).with_name("download_sources.yaml")
MARKERS = ".vita-download"
CHUNK = 1 << 16   # what a dropped connection can cost: the chunk in flight is not on disk yet


class DownloadError(VitaError):
    """A file could not be fetched or verified; a rerun resumes where it stopped."""
    retryable = True


class HfFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    repo: str
    file: str | None = None
    snapshot: bool = False          # the whole dataset repo into `name` (a folder)
    revision: str = "main"


class RemoteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Path under the download root")
    url: str | None = None
    hf: HfFile | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="Where the publisher gives only an MD5 "
                            "(Zenodo, OpenSLR): it finds a corrupted or truncated copy, which is its job here")
    approx_bytes: int = Field(ge=0)
    unpack: str | None = Field(None, description="Unpack (.zip, .tar, .tar.gz/.tgz, .7z) into this folder under the "
                               "root")

    @model_validator(mode="after")
    def _one_origin(self):
        if (self.url is None) == (self.hf is None):
            raise ValueError(f"{self.name}: give exactly one of url and hf")
        return self


class Conversion(BaseModel):
    """A `vita-data audio-chat` run on a complete source; paths relative to the download root."""
    model_config = ConfigDict(extra="forbid")
    format: str
    src: str
    out: str
    name: str
    task: str | None = None
    audio_dir: str | None = None


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    licence: str = Field("see the publisher's terms", description="As the publisher states it (summary)")
    files: list[RemoteFile] = Field(default_factory=list)
    manual: str | None = Field(None, description="Where to get it by hand, for a source without a direct download "
                               "(Google Drive folders, sign-up links); the files then go under `provides`")
    provides: list[str] = Field(default_factory=list, description="Paths under the root this source fills (image "
                                "folders): `vita-data check` names the source of a missing file under them")
    registry: dict = Field(default_factory=dict)
    convert: list[Conversion] = Field(default_factory=list, description="Audio datasets turned into conversations "
                                      "and registered (with their task) once the files are complete")

    @model_validator(mode="after")
    def _files_or_manual(self):
        if not self.files and not self.manual:
            raise ValueError("a source needs files to fetch, or `manual` instructions")
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: dict[str, Source]
    mixtures: dict[str, list[str]] = Field(default_factory=dict, description="Written into the registry once every "
                                           "dataset they name is there")

    def source_of(self, path: str) -> str | None:
        """The source whose `provides` holds `path` (relative to the download root), longest prefix first."""
        best = max(((p, n) for n, s in self.sources.items() for p in s.provides
                    if path == p or path.startswith(p.rstrip("/") + "/")), key=lambda x: len(x[0]), default=None)
        return best[1] if best else None


def load_manifest(path: Path = SOURCES_FILE) -> Manifest:
    try:
        return Manifest.model_validate(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"download manifest {path} is invalid: {e}") from e


# --- what is done, what is left (pure over the file system's answers) -----------------------------------------
def marker_path(root: Path, f: RemoteFile) -> Path:
    return root / MARKERS / (f.name.replace("/", "__") + ".json")


@dataclass(frozen=True)
class Pending:
    source: str
    file: RemoteFile
    have_bytes: int           # of a partial download (.part); 0 if none
    disk_bytes: int           # still to be written: the rest of the download, and the unpacked copy


def pending(root: Path, manifest: Manifest, names: list[str]) -> list[Pending]:
    out = []
    for name in names:
        for f in manifest.sources[name].files:
            if marker_path(root, f).is_file():
                continue
            part = root / (f.name + ".part")
            have = part.stat().st_size if part.is_file() else 0
            rest = max(f.approx_bytes - have, 0)
            out.append(Pending(name, f, have, rest + (f.approx_bytes if f.unpack else 0)))
    return out


def with_hub_sizes(todo: list[Pending]) -> list[Pending]:
    """A Hugging Face file's size as the Hub states it, instead of the manifest's estimate (the dry run and the
    disk check then use the real figure); a file whose size cannot be read keeps the estimate."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    out = []
    for p in todo:
        f = p.file
        if f.hf and f.hf.file and not f.hf.snapshot:
            try:
                size = get_hf_file_metadata(hf_hub_url(f.hf.repo, f.hf.file, repo_type="dataset",
                                                       revision=f.hf.revision, endpoint=constants.ENDPOINT)).size
            except Exception:  # offline, unreachable, refused: the estimate stands, the download says what is wrong
                size = None
            if size is not None:
                f = f.model_copy(update={"approx_bytes": size})
                p = Pending(p.source, f, p.have_bytes, max(size - p.have_bytes, 0) + (size if f.unpack else 0))
        out.append(p)
    return out


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def check_disk(root: Path, todo: list[Pending]) -> None:
    need = sum(p.disk_bytes for p in todo)
    free = shutil.disk_usage(root).free
    if need > free:
        raise ConfigError(f"{root} has {human(free)} free but the downloads need about {human(need)} (archives and "
                          f"their unpacked files); free space, choose a larger volume with --root, or fetch fewer "
                          f"sources (--source)")


# --- fetching ---------------------------------------------------------------------------------------------------
def _total_from(response, have: int) -> int | None:
    """The full size the server announces: Content-Range's total on a 206, else Content-Length."""
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return int(length) if length is not None and response.status_code == 200 else None


def fetch_url(url: str, dest: Path, *, sha256: str | None, md5: str | None = None, retries: int = 5,
              backoff: float = 1.0, overall: tqdm | None = None, session=None) -> int:
    """Download `url` to `dest` through `dest.part`; returns the bytes transferred. The .part file survives a
    failure (a rerun resumes it); it is deleted when the finished file fails its checksum (it cannot be resumed)."""
    import requests
    session = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    moved, total, last_error = 0, None, None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, headers=headers, stream=True, timeout=(15, 120)) as r:
                if r.status_code == 416:      # nothing after `have`: the .part is already whole (or too long)
                    total = int(r.headers.get("Content-Range", "*/-1").rsplit("/", 1)[1] or -1)
                    if total == have:
                        break
                    part.unlink()
                    raise DownloadError(f"{dest.name}: the partial file does not match the server's copy")
                if r.status_code >= 500 or r.status_code == 429:
                    raise DownloadError(f"{dest.name}: HTTP {r.status_code} from {url}")
                if r.status_code >= 400:      # 4xx: a wrong URL or missing credentials; retrying cannot help
                    raise ConfigError(f"{dest.name}: HTTP {r.status_code} from {url}; check the URL (or the "
                                      f"manifest given with --manifest)")
                if have and r.status_code == 200:  # the server ignored Range: start over
                    have = 0
                total = _total_from(r, have)
                with open(part, "ab" if have else "wb") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, leave=False,
                        disable=None, file=sys.stderr) as bar:
                    for chunk in r.iter_content(CHUNK):
                        out.write(chunk)
                        moved += len(chunk)
                        bar.update(len(chunk))
                        if overall is not None:
                            overall.update(len(chunk))
            size = part.stat().st_size
            if total is not None and size < total:
                raise DownloadError(f"{dest.name}: connection closed at {size} of {total} bytes")
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                DownloadError) as e:
            last_error = e
            if attempt == retries:
                raise DownloadError(f"{dest.name}: gave up after {retries + 1} attempts ({e}); rerun to resume from "
                                    f"{part}") from e
            time.sleep(backoff * 2 ** attempt)
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{dest.name}: {size} bytes on disk but the server announced {total} ({last_error})")
    for algorithm, published in (("sha256", sha256), ("md5", md5)):
        if published and (got := file_digest(part, algorithm)) != published:
            part.unlink()
            raise DownloadError(f"{dest.name}: {algorithm} {got} does not match the published {published}; the "
                                f"download was removed (nothing was renamed). Rerun to fetch it again; if it fails the "
                                f"same way, the source or a proxy serves another file")
    os.replace(part, dest)
    return moved


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def fetch_hf(f: RemoteFile, root: Path) -> int:
    """Through huggingface_hub (resume, HF_TOKEN, HF_ENDPOINT). The Hub's LFS sha256, or the manifest's, is
    checked; returns the size on disk (the Hub client does not report what it transferred)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError
    dest = root / f.name
    endpoint = constants.ENDPOINT  # HF_ENDPOINT (a mirror) when set
    try:
        if f.hf.snapshot:
            snapshot_download(f.hf.repo, repo_type="dataset", revision=f.hf.revision, local_dir=dest,
                              endpoint=endpoint)
            return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        expected = f.sha256
        if expected is None:
            meta = get_hf_file_metadata(hf_hub_url(f.hf.repo, f.hf.file, repo_type="dataset",
                                                   revision=f.hf.revision, endpoint=endpoint))
            etag = (meta.etag or "").strip('"')
            expected = etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None  # an LFS file's etag is its sha256
        got = Path(hf_hub_download(f.hf.repo, f.hf.file, repo_type="dataset", revision=f.hf.revision,
                                   local_dir=dest.parent, endpoint=endpoint))
    except HfHubHTTPError as e:
        raise DownloadError(f"{f.name}: {e}; for a gated or private repo set HF_TOKEN, behind a firewall set "
                            f"HF_ENDPOINT to a mirror") from e
    if got != dest:
        os.replace(got, dest)
    if expected and file_sha256(dest) != expected:
        dest.unlink()
        raise DownloadError(f"{f.name}: sha256 does not match the Hub's {expected}; the file was removed, rerun")
    return dest.stat().st_size


def unpack(archive: Path, into: Path) -> int:
    """Unpack a .zip, .tar(.gz) or .7z, refusing members that would land outside `into`; returns the number of
    files."""
    into.mkdir(parents=True, exist_ok=True)
    base = into.resolve()

    def inside(names: list[str]) -> None:
        for member in names:
            if not (into / member).resolve().is_relative_to(base):
                raise DownloadError(f"{archive.name}: member {member!r} would unpack outside {into}")
    name = archive.name.lower()
    if name.endswith(".7z"):
        import py7zr
        with py7zr.SevenZipFile(archive) as z:
            files = [i.filename for i in z.list() if not i.is_directory]
            inside(z.getnames())
            z.extractall(into)
        return len(files)
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(archive) as t:
            members = t.getmembers()
            inside([m.name for m in members])
            t.extractall(into, filter="data")  # no links out, no devices, no setuid (PEP 706)
        return sum(1 for m in members if m.isfile())
    with zipfile.ZipFile(archive) as z:
        inside(z.namelist())
        z.extractall(into)
        return sum(1 for i in z.infolist() if not i.is_dir())


def update_registry(root: Path, manifest: Manifest, done: list[str]) -> Path:
    """Merge each complete source's registry entries into <root>/registry.yaml (other entries are kept), then the
    manifest's mixtures whose datasets are all there. Under the file's lock and replaced atomically: initializers of
    several runs on one dataset volume keep each other's entries."""
    path = root / "registry.yaml"

    def merged(text: str | None) -> str:
        reg = (yaml.safe_load(text) if text else {}) or {}
        for name in done:
            for key, value in manifest.sources[name].registry.items():
                if isinstance(value, dict):
                    reg.setdefault(key, {}).update(value)
                else:
                    reg[key] = value
        for mixture, members in manifest.mixtures.items():
            if all(m in reg.get("datasets", {}) for m in members):
                reg.setdefault("mixtures", {})[mixture] = list(members)
        reg = with_audio_mixtures(reg)
        return ("# Written by `vita-data download`; entries of other sources and your own edits are kept.\n"
                + yaml.safe_dump(reg, sort_keys=True))
    update_text(path, merged)
    return path


def download(root: Path, names: list[str], manifest: Manifest, *, dry_run: bool = False, keep_archives: bool = False,
             retries: int = 5, backoff: float = 1.0, out=None) -> dict:
    out = out or sys.stdout
    unknown = [n for n in names if n not in manifest.sources]
    if unknown:
        raise ConfigError(f"unknown source(s) {unknown}; known: {sorted(manifest.sources)}")
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = manifest.sources[name]
        print(f"{name:<16}licence: {src.licence}", file=out)
        if src.manual:
            print(f"{'':<16}by hand (no direct download): {src.manual}", file=out)
    todo = with_hub_sizes(pending(root, manifest, names))
    for p in todo:
        origin = p.file.url or f"hf://datasets/{p.file.hf.repo}/{p.file.hf.file or ''}"
        state = f"resume at {human(p.have_bytes)}" if p.have_bytes else "fetch"
        print(f"{p.source:<16}{p.file.name:<60}{human(p.file.approx_bytes):>10}  {state}  {origin}", file=out)
    print(f"{len(todo)} file(s) to fetch, about {human(sum(p.disk_bytes for p in todo))} of disk; "
          f"{human(shutil.disk_usage(root).free)} free in {root}", file=out)
    if dry_run:
        return {"pending": len(todo), "bytes": 0}
    check_disk(root, todo)
    moved = 0
    with tqdm(total=sum(max(p.file.approx_bytes - p.have_bytes, 0) for p in todo), unit="B", unit_scale=True,
              desc="all", disable=None, file=sys.stderr) as overall:
        for p in todo:
            f, dest = p.file, root / p.file.name
            if f.url:
                moved += fetch_url(f.url, dest, sha256=f.sha256, md5=f.md5, retries=retries, backoff=backoff,
                                   overall=overall)
            else:
                moved += fetch_hf(f, root)
            record = {"size": dest.stat().st_size if dest.is_file() else None}
            if f.unpack:
                record["files"] = unpack(dest, root / f.unpack)
                record["unpacked_to"] = f.unpack
                if not keep_archives:
                    dest.unlink()
            marker = marker_path(root, f)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(record))
    complete = [n for n in names if not pending(root, manifest, [n])]
    for name in complete:
        convert_source(root, manifest.sources[name], out)
    registry = update_registry(root, manifest, complete)
    print(f"done: {human(moved)} transferred; registry {registry}\nnext: vita-data check --registry {registry}",
          file=out)
    return {"pending": 0, "bytes": moved, "registry": str(registry)}


def convert_source(root: Path, src: Source, out) -> None:
    """The source's audio datasets as conversations, registered (resumable: done shards are skipped)."""
    from .audio_chat import AudioChatOptions, convert
    for c in src.convert:
        summary = convert(AudioChatOptions(fmt=c.format, src=root / c.src, out=root / c.out, name=c.name, task=c.task,
                                           audio_dir=root / c.audio_dir if c.audio_dir else None,
                                           registry=root / "registry.yaml"))
        print(f"{c.name:<16}{summary['samples']} samples ({summary['audio_hours']} h) -> {c.out}; skipped "
              + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items() if v), file=out)


def how_to_get(manifest: Manifest, name: str, root: Path) -> str:
    src = manifest.sources[name]
    return f"get it by hand: {src.manual}" if src.manual else \
        f"fetch it: vita-data download --root {root} --source {name}"


def attribute_missing(problems: list, registry: Path, manifest: Manifest) -> tuple[list, dict[str, int]]:
    """Missing media files under a download root (the registry's folder, as `vita-data download` writes it) that a
    source provides: (the problems, each such one's hint naming the source and how to get it; the count per
    source)."""
    import dataclasses

    from ..data.paths import missing_path
    root = registry.resolve().parent
    counts: dict[str, int] = {}
    out = []
    for p in problems:
        path = missing_path(p.message) if p.reason == "missing_file" else None
        rel = Path(path).resolve() if path else None
        name = manifest.source_of(rel.relative_to(root).as_posix()) if rel and rel.is_relative_to(root) else None
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
            p = dataclasses.replace(p, hint=f"part of source {name} ({manifest.sources[name].description}); "
                                            f"{how_to_get(manifest, name, root)}")
        out.append(p)
    return out, counts
