"""One sample from raw JSON to model inputs: template -> token ids and labels -> image tiles and fbank.

`layout` is the token side alone (given media counts); training calls it after decoding media, and
`vita-data check` calls it with counts read from file headers, so both apply the same truncation and
masking rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from vita_api.constants import (AUDIO_TOKEN, IGNORE_INDEX, IMAGE_ASPECT_RATIOS, IMAGE_TOKEN, MAX_AUDIO_SECONDS,
                                MIN_AUDIO_SECONDS)
from vita_api.errors import ConfigError, DataError
from . import audio as audio_io
from .audio_tokens import audio_llm_tokens
from .chat_format import DEFAULT_FORMAT, MODALITIES, get_format
from .image import decode_for_device, pad_colour, pad_to_square, tile_image, tiles_to_tensor
from .paths import resolve_media
from .registry import Registry
from .sample import ParsedSample
from .template import render_segments, tokenize_segments
from .video import load_frames

IMAGE_PIPELINES = ("host", "device")


@dataclass(frozen=True)
class MediaSpec:
    """What the data path must know about the model's encoders (derived from VitaConfig)."""
    tile_size: int
    tokens_per_tile: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    audio_tokens_fn: object             # fbank frames -> LLM tokens (the encoder's own length formula)
    max_tiles: int = 12
    use_thumbnail: bool = True
    min_audio_seconds: float = MIN_AUDIO_SECONDS
    max_audio_seconds: float = MAX_AUDIO_SECONDS

    @classmethod
    def from_config(cls, config, **overrides) -> "MediaSpec":
        stride = config.audio_config["adapter_stride"]
        values = dict(tile_size=config.tile_size, tokens_per_tile=config.tokens_per_tile,
                      image_mean=tuple(config.image_mean), image_std=tuple(config.image_std),
                      audio_tokens_fn=lambda frames: audio_llm_tokens(frames, stride),
                      max_tiles=config.max_tiles)
        values.update(overrides)
        return cls(**values)


@dataclass
class Warnings:
    """Counted, non-fatal observations (e.g. audio outside the duration bounds)."""
    audio_too_short: int = 0
    audio_too_long: int = 0


class SampleProcessor:
    def __init__(self, tokenizer, media: MediaSpec, registry: Registry, model_max_length: int,
                 image_aspect_ratio: str = "dynamic", cmvn: audio_io.GlobalCMVN | None = None,
                 system_prompt: str | None = None, chat_format: str = DEFAULT_FORMAT,
                 system_prompts: dict[str, str] | None = None, image_pipeline: str = "host"):
        """`system_prompt` replaces all three modality prompts; `system_prompts` ({image, video, language}) any.
        `image_pipeline`: "host" returns normalised float tiles (the reference's PIL pixels); "device" returns the
        decoded uint8 images and their tile grids, and the model tiles them on its device."""
        if image_pipeline not in IMAGE_PIPELINES:
            raise ConfigError(f"--image_pipeline {image_pipeline!r}: choose one of {', '.join(IMAGE_PIPELINES)}")
        if image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ConfigError(f"--image_aspect_ratio {image_aspect_ratio!r}: choose one of "
                              f"{', '.join(IMAGE_ASPECT_RATIOS)}")
        self.image_pipeline = image_pipeline
        # pad: every image and frame is first pasted on a square of the mean colour, then tiled (the reference)
        self.pad = pad_colour(media.image_mean) if image_aspect_ratio == "pad" else None
        self.tok, self.media, self.registry = tokenizer, media, registry
        self.max_len = model_max_length
        self.format = get_format(chat_format)
        self.dynamic = image_aspect_ratio != "square" or self.format.square_still_tiles
        self.cmvn = cmvn or audio_io.GlobalCMVN.identity()
        self.system_prompts = {**({m: system_prompt for m in MODALITIES} if system_prompt else {}),
                               **{m: t for m, t in (system_prompts or {}).items() if t}}
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.warnings = Warnings()

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # --- paths ---------------------------------------------------------------------------------
    def image_paths(self, s: ParsedSample, file: str) -> list[Path]:
        return [resolve_media(self.registry.image_folder(s.image_set(i), file=file, sample_id=s.sample_id), rel,
                              file=file, sample_id=s.sample_id, field=f"image[{i}]")
                for i, rel in enumerate(s.images)]

    def audio_paths(self, s: ParsedSample, file: str) -> list[Path]:
        root = self.registry.media_root("audio", file)
        return [resolve_media(root, rel, file=file, sample_id=s.sample_id, field=f"audio[{i}]")
                for i, rel in enumerate(s.audios)]

    def video_path(self, s: ParsedSample, file: str) -> Path | None:
        if not s.video:
            return None
        root = self.registry.media_root("video", file)
        return resolve_media(root, s.video, file=file, sample_id=s.sample_id, field="video")

    def dynamic_tiling(self, s: ParsedSample, file: str, image: int = 0) -> bool:
        """As the reference: `no_patch_sets` is consulted only for an image of a multi-image sample; a single
        image is always tiled (unless `square` under chatml)."""
        if not self.dynamic or len(s.images) < 2:
            return self.dynamic
        set_name = s.image_set(image) or self.registry.default_set(file)
        return set_name not in self.registry.no_patch_sets

    def check_duration(self, seconds: float, path: Path, *, file: str, sid: str, field: str) -> None:
        """Counted warning outside [min, max]; an error when too short to yield one LLM token."""
        if seconds < self.media.min_audio_seconds:
            self.warnings.audio_too_short += 1
        elif seconds > self.media.max_audio_seconds:
            self.warnings.audio_too_long += 1
        if self.media.audio_tokens_fn(audio_io.fbank_frames(int(seconds * audio_io.SAMPLE_RATE))) < 1:
            raise DataError(f"audio {path} is {seconds:.3f}s long, too short to encode", file=file, sample_id=sid,
                            field=field, reason="audio_too_short")

    # --- media ---------------------------------------------------------------------------------
    def _load_images(self, s: ParsedSample, file: str, decode) -> list:
        """`decode(opened image, dynamic tiling?)` for each of the sample's images, decode errors named."""
        out = []
        for i, path in enumerate(self.image_paths(s, file)):
            try:
                with Image.open(path) as im:
                    out.append(decode(im, self.dynamic_tiling(s, file, i)))
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise DataError(f"image {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id,
                                field=f"image[{i}]", reason="corrupt_file") from e
        return out

    def host_tiles(self, image: Image.Image, dynamic: bool) -> list[Image.Image]:
        image.load()
        if self.pad:
            image = pad_to_square(image, self.pad)
        return tile_image(image, self.media.tile_size, self.media.max_tiles, self.media.use_thumbnail, dynamic=dynamic)

    def device_image(self, image: Image.Image, dynamic: bool) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        return decode_for_device(image, self.media.tile_size, self.media.max_tiles, self.media.use_thumbnail,
                                 dynamic=dynamic, pad=self.pad)

    def _load_video(self, s: ParsedSample, file: str) -> list[Image.Image]:
        path = self.video_path(s, file)
        if path is None:
            return []
        try:
            return load_frames(path)
        except (ValueError, OSError) as e:
            raise DataError(f"video {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id,
                            field="video", reason="corrupt_file") from e

    def _load_audios(self, s: ParsedSample, file: str) -> list[torch.Tensor]:
        feats = []
        for i, path in enumerate(self.audio_paths(s, file)):
            try:
                wave = audio_io.load_audio(path)
            except Exception as e:  # soundfile raises LibsndfileError / RuntimeError variants
                raise DataError(f"audio {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id,
                                field=f"audio[{i}]", reason="corrupt_file") from e
            self.check_duration(wave.numel() / audio_io.SAMPLE_RATE, path, file=file, sid=s.sample_id,
                                field=f"audio[{i}]")
            feats.append(self.cmvn(audio_io.fbank(wave)))
        return feats

    # --- tokens ------------------------------------------------------------------------------
    def layout(self, s: ParsedSample, file: str, image_tiles: list[int], video_frames: int,
               audio_frames: list[int]) -> tuple[list[int], list[int]]:
        """Token ids and labels with one media token per embedding slot; raises on truncated media and on
        samples with nothing left to train."""
        fmt = self.format
        turns = fmt.turns(s.turns, video_frames, s.inserted_id)
        tpt = self.media.tokens_per_tile
        counts = {self.image_id: [n * tpt for n in image_tiles] + [tpt] * video_frames,
                  self.audio_id: [self.media.audio_tokens_fn(f) for f in audio_frames]}
        segments = render_segments(turns, fmt.system_prompt(s.modality, self.system_prompts),
                                   newline_after_last_turn=fmt.newline_after_last_turn, end_tag=s.end_tag)
        ids, labels = tokenize_segments(segments, self._encode)
        if [ids.count(self.image_id), ids.count(self.audio_id)] != [len(counts[self.image_id]),
                                                                     len(counts[self.audio_id])]:
            raise DataError("media tokens appear in the text itself", file=file, sample_id=s.sample_id,
                            field="conversations", reason="placeholder",
                            hint=f"remove literal {IMAGE_TOKEN}/{AUDIO_TOKEN} from the text")
        ids, labels = _expand(ids, labels, counts)
        if len(ids) > self.max_len:
            media_pos = [i for i, t in enumerate(ids) if t in (self.image_id, self.audio_id)]
            if media_pos and media_pos[-1] >= self.max_len:
                raise DataError(f"sample is {len(ids)} tokens and truncation at model_max_length={self.max_len} "
                                f"would cut through its media", file=file, sample_id=s.sample_id,
                                field="conversations", reason="truncated",
                                hint="raise --model_max_length, use fewer tiles, or shorten the sample")
            ids, labels = ids[: self.max_len], labels[: self.max_len]
        if all(lab == IGNORE_INDEX for lab in labels):
            raise DataError("every label is masked (nothing to train; the reference's silent 'loss is 0')",
                            file=file, sample_id=s.sample_id, field="conversations", reason="fully_masked",
                            hint="check the assistant replies are non-empty and fit within --model_max_length")
        return ids, labels

    def __call__(self, s: ParsedSample, file: str) -> dict:
        frames = self._load_video(s, file)  # each frame is one untiled tile
        if self.image_pipeline == "device":
            decoded = self._load_images(s, file, self.device_image) + [self.device_image(f, False) for f in frames]
            tile_counts = [cols * rows + thumb for _, (cols, rows, thumb, _) in decoded[:len(decoded) - len(frames)]]
            media = {"images": [pixels for pixels, _ in decoded], "image_grids": [grid for _, grid in decoded]}
        else:
            tile_groups = self._load_images(s, file, self.host_tiles) + [self.host_tiles(f, False) for f in frames]
            tile_counts = [len(g) for g in tile_groups[:len(tile_groups) - len(frames)]]
            tiles = [t for g in tile_groups for t in g]
            media = {"pixel_values": tiles_to_tensor(tiles, self.media.image_mean, self.media.image_std)
                     if tiles else None}
        feats = self._load_audios(s, file)
        ids, labels = self.layout(s, file, tile_counts, len(frames), [f.shape[0] for f in feats])
        return {"id": s.sample_id, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **media,
                "audio_features": feats, "transcript": s.turns[-1][1]}


def _expand(ids: list[int], labels: list[int], counts: dict[int, list[int]]):
    """Replace each single media token by one token per embedding slot (labels stay masked)."""
    out_ids, out_labels = [], []
    cursor = {k: 0 for k in counts}
    for tid, lab in zip(ids, labels):
        if tid in counts:
            n = counts[tid][cursor[tid]]
            cursor[tid] += 1
            out_ids.extend([tid] * n)
            out_labels.extend([IGNORE_INDEX] * n)
        else:
            out_ids.append(tid)
            out_labels.append(lab)
    return out_ids, out_labels
