"""Dataset registry in YAML, replacing the reference's Python config modules.

    image_folders: {set_name: path}         # FolderDict
    audio_root: path                         # AudioFolder
    video_root: path                         # optional
    no_patch_sets: [set_name, ...]           # NoPatchSets: an image of a multi-image sample is one untiled tile
    datasets: {name: {chat_path: path, data_ratio: 1.0,
                      set: set_name | image_folder: path,   # for its samples without `set` (LLaVA, ShareGPT4V)
                      audio_root: path, video_root: path}}  # override the registry's roots for this dataset
    mixtures: {key: [dataset name, ...]}     # selected with --dataset_use

Relative paths are resolved against the YAML file's folder. Where a sample's media lives is decided in one place,
`Registry.image_folder` / `media_root`, for training, `vita-data check` and `concat` alike: a sample's own `set`
wins, then its dataset's `set` or `image_folder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from vita_api.errors import ConfigError, DataError

AudioTask = Literal["asr", "caption", "qa"]
# Stage 2.1 aligns on transcription first, as VITA-1.5's recipe; captions and spoken questions follow.
AUDIO_TASK_ORDER: tuple[str, ...] = ("asr", "caption", "qa")
AUDIO_MIXTURE, MULTIMODAL_MIXTURE, IMAGE_MIXTURE = "Pretrain_audio", "Pretrain_multimodal", "Pretrain_image"


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    chat_path: str = Field(description="JSON or JSONL file of VITA/LLaVA conversation samples")
    data_ratio: float = Field(1.0, gt=0, le=1, description="Fraction of the file's samples to use")
    default_set: str | None = Field(None, alias="set", description="image_folders entry for samples without `set`")
    image_folder: str | None = Field(None, description="Image folder for samples without `set` (LLaVA and "
                                     "ShareGPT4V files as downloaded: paths like coco/train2017/x.jpg under it)")
    audio_root: str | None = Field(None, description="Audio folder of this dataset (default: the registry's)")
    video_root: str | None = Field(None, description="Video folder of this dataset (default: the registry's)")
    task: AudioTask | None = Field(None, description="What an audio dataset teaches (`vita-data audio-chat` writes "
                                   "it): the audio mixtures are built from it")

    @model_validator(mode="after")
    def _one_default_image_root(self):
        if self.default_set and self.image_folder:
            raise ValueError(f"dataset {self.chat_path}: set either `set` (an image_folders name) or `image_folder` "
                             f"(a path), not both")
        return self


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_folders: dict[str, str] = Field(default_factory=dict)
    audio_root: str | None = None
    video_root: str | None = None
    no_patch_sets: list[str] = Field(default_factory=list)
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict)
    mixtures: dict[str, list[str]] = Field(default_factory=dict)
    base_dir: str = "."
    _by_file: dict[str, DatasetEntry] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _mixtures_reference_datasets(self):
        for key, names in self.mixtures.items():
            missing = [n for n in names if n not in self.datasets]
            if missing:
                raise ValueError(f"mixture {key!r} names datasets {missing} that are not under `datasets:`; "
                                 f"defined: {sorted(self.datasets)}")
        for name, ds in self.datasets.items():
            if ds.default_set and ds.default_set not in self.image_folders:
                raise ValueError(f"dataset {name!r}: set {ds.default_set!r} is not under image_folders "
                                 f"(known: {sorted(self.image_folders)})")
        by_file: dict[str, tuple[str, DatasetEntry]] = {}
        for name, ds in self.datasets.items():
            key = str(self.resolve(ds.chat_path))
            other = by_file.setdefault(key, (name, ds))
            if _roots(other[1]) != _roots(ds):  # media roots are looked up by chat file: they must agree
                raise ValueError(f"datasets {other[0]!r} and {name!r} read the same chat file {ds.chat_path} with "
                                 f"different media folders; use one dataset entry (with data_ratio) per file")
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def mixture(self, key: str) -> list[tuple[str, DatasetEntry]]:
        """Datasets for a --dataset_use key: a mixture name, or a single dataset name."""
        if key in self.mixtures:
            return [(n, self.datasets[n]) for n in self.mixtures[key]]
        if key in self.datasets:
            return [(key, self.datasets[key])]
        raise ConfigError(f"--dataset_use {key!r} is neither a mixture nor a dataset in the registry; "
                          f"mixtures: {sorted(self.mixtures)}, datasets: {sorted(self.datasets)}")

    def dataset_of(self, file: str) -> DatasetEntry | None:
        """The dataset entry reading this chat file, if any (files given directly to the tools have none)."""
        if self._by_file is None:
            self._by_file = {str(self.resolve(ds.chat_path)): ds for ds in self.datasets.values()}
        key = str(Path(file))
        if key not in self._by_file:  # asked once per sample and image: resolve (file system calls) once per file
            self._by_file[key] = self._by_file.get(str(Path(file).resolve()))
        return self._by_file[key]

    def default_set(self, file: str) -> str | None:
        """The set a sample of this file without `set` belongs to (its dataset's `set`), if any."""
        ds = self.dataset_of(file)
        return ds.default_set if ds else None

    def media_root(self, kind: str, file: str) -> Path:
        """Where a sample of this chat file finds its audio or video: its dataset's root, else the registry's."""
        ds = self.dataset_of(file)
        own = getattr(ds, f"{kind}_root") if ds else None
        return self.resolve(own or getattr(self, f"{kind}_root") or ".")

    def image_folder(self, set_name: str | None, *, file: str, sample_id: str):
        """The folder a sample's image paths are relative to: its own `set`, else its dataset's `set` or
        `image_folder`."""
        if set_name is None:
            ds = self.dataset_of(file)
            if ds and ds.image_folder:
                return self.resolve(ds.image_folder)
            set_name = ds.default_set if ds else None
        if set_name is None:
            raise DataError("sample has media but no `set` field, and its dataset names no image folder",
                            file=file, sample_id=sample_id, field="set",
                            hint=f"name the folder once for the whole file: `image_folder: <folder>` (or `set: "
                                 f"<name>`) on its entry under datasets: in the registry; or add \"set\" to the "
                                 f"sample (one of {sorted(self.image_folders)})")
        if set_name not in self.image_folders:
            raise DataError(f"set {set_name!r} is not in the registry's image_folders", file=file,
                            sample_id=sample_id, field="set",
                            hint=f"add `{set_name}: <folder>` under image_folders in the registry YAML "
                                 f"(known sets: {sorted(self.image_folders)})")
        return self.resolve(self.image_folders[set_name])


def with_audio_mixtures(reg: dict) -> dict:
    """The registry (plain YAML data) with `Pretrain_audio` (every dataset with a `task`, ASR first, then captions,
    then spoken questions, by name within a task) and `Pretrain_multimodal` (`Pretrain_image`'s datasets, then
    `Pretrain_audio`'s) derived from what is registered. Written by `vita-data audio-chat` and `download`; an
    audio mixture with no audio dataset is not written, and a mixture you wrote by hand under another key is kept."""
    datasets = reg.get("datasets") or {}
    audio = [name for task in AUDIO_TASK_ORDER for name in sorted(datasets) if datasets[name].get("task") == task]
    if not audio:
        return reg
    mixtures = dict(reg.get("mixtures") or {})
    mixtures[AUDIO_MIXTURE] = audio
    mixtures[MULTIMODAL_MIXTURE] = [*mixtures.get(IMAGE_MIXTURE, []), *audio]
    return {**reg, "mixtures": mixtures}


def _roots(ds: DatasetEntry) -> tuple:
    return ds.default_set, ds.image_folder, ds.audio_root, ds.video_root


def load_registry(path: str | Path) -> Registry:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset registry {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        raw.setdefault("base_dir", str(path.parent.resolve()))
        return Registry.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"dataset registry {path} is invalid: {e}") from e
