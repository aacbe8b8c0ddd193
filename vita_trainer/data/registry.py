"""Dataset registry in YAML, replacing the reference's Python config modules.

    image_folders: {set_name: path}         # FolderDict
    audio_root: path                         # AudioFolder
    video_root: path                         # optional
    no_patch_sets: [set_name, ...]           # NoPatchSets: one untiled tile
    datasets: {name: {chat_path: path, data_ratio: 1.0}}
    mixtures: {key: [dataset name, ...]}     # selected with --dataset_use

Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, DataError


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chat_path: str = Field(description="JSON or JSONL file of VITA/LLaVA conversation samples")
    data_ratio: float = Field(1.0, gt=0, le=1, description="Fraction of the file's samples to use")


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_folders: dict[str, str] = Field(default_factory=dict)
    audio_root: str | None = None
    video_root: str | None = None
    no_patch_sets: list[str] = Field(default_factory=list)
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict)
    mixtures: dict[str, list[str]] = Field(default_factory=dict)
    base_dir: str = "."

    @model_validator(mode="after")
    def _mixtures_reference_datasets(self):
        for key, names in self.mixtures.items():
            missing = [n for n in names if n not in self.datasets]
            if missing:
                raise ValueError(f"mixture {key!r} names datasets {missing} that are not under `datasets:`; "
                                 f"defined: {sorted(self.datasets)}")
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

    def image_folder(self, set_name: str | None, *, file: str, sample_id: str):
        if set_name is None:
            raise DataError("sample has media but no `set` field", file=file, sample_id=sample_id, field="set",
                            hint=f"add \"set\": one of {sorted(self.image_folders)}")
        if set_name not in self.image_folders:
            raise DataError(f"set {set_name!r} is not in the registry's image_folders", file=file,
                            sample_id=sample_id, field="set",
                            hint=f"add `{set_name}: <folder>` under image_folders in the registry YAML "
                                 f"(known sets: {sorted(self.image_folders)})")
        return self.resolve(self.image_folders[set_name])


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
