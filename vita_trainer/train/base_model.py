"""The model folder a stage loads: a VITA folder as it is, or a base prepared once per run from a released
VITA-1.5 folder or a plain Hugging Face LLM."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import torch

from vita_api.errors import ConfigError
from vita_api.plan import PREPARED_BASE_DIR
from .arguments import ModelArguments

log = logging.getLogger("vita_trainer")


def prepared_base(model_dir: Path, model_args: ModelArguments, output_dir: Path, is_main: bool) -> Path:
    """The folder to load: a VITA folder as it is; a released VITA-1.5 folder imported, or a Hugging Face LLM
    composed with --vision_tower (and --audio_encoder), once per run into <output>/base-model.

    Rank 0 writes it (into a temporary folder, renamed when complete); the other ranks wait at a barrier.
    """
    from ..model.vita15 import MODEL_TYPE as VITA15_TYPE
    from ..model.vita15 import read_json
    kind = read_json(model_dir / "config.json").get("model_type")
    if kind == "vita":
        for flag in ("vision_tower", "audio_encoder"):
            if getattr(model_args, flag):
                raise ConfigError(f"--{flag} applies to a released VITA-1.5 base or an LLM to compose from; "
                                  f"{model_dir} is a VITA folder that already holds its towers")
        return model_dir
    if kind != VITA15_TYPE and not model_args.vision_tower:
        raise ConfigError(f"{model_dir} is a {kind!r} model, not a VITA folder: pass --vision_tower (and "
                          f"--audio_encoder) to compose one from it, or point at a VITA folder")
    target = output_dir.parent / PREPARED_BASE_DIR
    if is_main and not (target / "config.json").is_file():
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        log.info("preparing the run's base model from %s in %s", model_dir, target)
        with _zero3_init_off():
            _prepare(kind, model_dir, model_args, tmp)
        tmp.rename(target)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return target


@contextlib.contextmanager
def _zero3_init_off():
    """Rank 0 prepares the base alone while the other ranks wait. Under ZeRO-3, transformers would build every
    model it loads with deepspeed.zero.Init, which partitions each parameter with a collective the waiting ranks
    never join (the run hangs there): so the preparation loads plain, full-size weights."""
    from transformers.integrations import deepspeed as hf_deepspeed
    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


def _prepare(kind: str, model_dir: Path, model_args: ModelArguments, tmp: Path) -> None:
    """A released VITA-1.5 folder imported, or an LLM composed with the tower folders, into `tmp`."""
    from ..model.vita15 import MODEL_TYPE as VITA15_TYPE
    from ..model.vita15 import import_vita15
    if kind == VITA15_TYPE:
        import_vita15(model_dir, tmp, model_args.vision_tower, model_args.audio_encoder,
                      model_args.tokenizer_name_or_path)
        return
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import write_composed
    write_composed(tmp, str(model_dir), model_args.vision_tower,
                   load_tokenizer(model_args.tokenizer_name_or_path or str(model_dir)),
                   audio_encoder=model_args.audio_encoder,
                   mm_projector_type=model_args.mm_projector_type or "mlp2x_gelu")
