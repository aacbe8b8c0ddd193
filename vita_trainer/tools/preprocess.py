"""`vita-data preprocess-images|audio`: resize/re-encode images, resample audio to 16 kHz mono (optionally with
fbank features), into another folder. Parallel and idempotent: an output newer than its input is skipped.
Inputs are never overwritten."""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

from vita_api.errors import VitaError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3"}


def _out_path(src: Path, root: Path, out: Path, kind: str) -> Path:
    rel = src.relative_to(root)
    return out / (rel.with_suffix(".wav") if kind == "audio" else rel)


def _up_to_date(src: Path, dst: Path) -> bool:
    return dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime


def _image(job) -> bool:
    from PIL import Image
    src, dst, max_side, _ = job
    if _up_to_date(src, dst):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB") if im.mode not in ("RGB", "L") else im
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        tmp = dst.with_name(dst.name + ".tmp")
        im.save(tmp, format=Image.registered_extensions().get(dst.suffix.lower(), "PNG"), quality=95)
    tmp.replace(dst)
    return True


def _audio(job) -> bool:
    import numpy as np
    import soundfile as sf

    from ..data.audio import SAMPLE_RATE, fbank, load_audio
    src, dst, _, with_fbank = job
    if _up_to_date(src, dst):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    wave = load_audio(src)
    tmp = dst.with_name(dst.name + ".tmp")
    sf.write(tmp, wave.numpy(), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    tmp.replace(dst)
    if with_fbank:
        np.save(dst.with_suffix(".fbank.npy"), fbank(wave).numpy())
    return True


def run_preprocess(kind: str, inp: Path, out: Path, workers: int, max_side: int = 1344,
                   fbank: bool = False) -> tuple[int, int]:
    inp, out = inp.resolve(), out.resolve()
    if out == inp or out.is_relative_to(inp) or inp.is_relative_to(out):
        raise VitaError(f"output {out} must not overlap the input {inp}: inputs are never overwritten")
    exts = AUDIO_EXTS if kind == "audio" else IMAGE_EXTS
    srcs = sorted(p for p in inp.rglob("*") if p.suffix.lower() in exts and p.is_file())
    jobs = [(s, _out_path(s, inp, out, kind), max_side, fbank) for s in srcs]
    fn = _audio if kind == "audio" else _image
    if workers <= 1:
        results = [fn(j) for j in jobs]
    else:
        with get_context("fork").Pool(workers) as pool:
            results = pool.map(fn, jobs, chunksize=16)
    done = sum(results)
    return done, len(results) - done
