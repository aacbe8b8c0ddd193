"""Tiny audio datasets in the public layouts, with generated audio: LibriSpeech, Clotho, and Hugging Face Parquet/Arrow
(written by the `datasets` library itself, so the layout is the real one)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import soundfile as sf

from vita_trainer.demo.synth import COUNTS, PITCHES, SR, beeps


def beep_clip(pitch: str, count: int, seed: int) -> np.ndarray:
    """The demo's beeps, padded with silence to at least 1 s (above the 0.5 s floor, whatever the count)."""
    wave = beeps(pitch, count, random.Random(seed))
    return np.pad(wave, (0, max(SR - wave.size, 0)))


def librispeech(root: Path, utterances: int = 24, *, extra: bool = True) -> Path:
    """<root>/LibriSpeech/train-clean-100/<speaker>/<chapter>/ with .trans.txt and .flac, as OpenSLR ships it; each
    transcript says what its beeps are (upper case, no punctuation, as LibriSpeech writes it). With
    `extra`: one clip of 31 s, one of 0.2 s and one transcript line whose .flac is missing."""
    split = root / "LibriSpeech" / "train-clean-100"
    lines: dict[Path, list[str]] = {}
    for i in range(utterances):
        speaker, chapter = 100 + i % 2, 200 + i % 3
        folder = split / str(speaker) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        utt = f"{speaker}-{chapter}-{i:04d}"
        pitch, count = list(PITCHES)[i % len(PITCHES)], list(COUNTS)[i % len(COUNTS)]
        sf.write(folder / f"{utt}.flac", beep_clip(pitch, count, i), SR)
        lines.setdefault(folder, []).append(f"{utt} I HEAR {COUNTS[count].upper()} {pitch.upper()} BEEPS")
    if extra:
        folder = split / "100" / "200"
        sf.write(folder / "100-200-9001.flac", np.zeros(31 * SR, dtype="float32"), SR)
        sf.write(folder / "100-200-9002.flac", np.zeros(SR // 5, dtype="float32"), SR)
        lines[folder] += ["100-200-9001 A VERY LONG READING", "100-200-9002 TOO SHORT", "100-200-9003 NOT ON DISK"]
    for folder, text in lines.items():
        speaker, chapter = folder.parent.name, folder.name
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(sorted(text)) + "\n")
    return split


def clotho(root: Path, clips: int = 3) -> Path:
    """clotho_captions_development.csv (file_name, caption_1..caption_5) and development/*.wav; the last clip's
    captions are in Chinese."""
    (root / "development").mkdir(parents=True, exist_ok=True)
    rows = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    for i in range(clips):
        pitch = list(PITCHES)[i % len(PITCHES)]
        name = f"clip {i}.wav"  # Clotho's names have spaces
        sf.write(root / "development" / name, beep_clip(pitch, 2, 100 + i), SR)
        caps = [f"{pitch} beeps sound {k}" for k in range(5)] if i < clips - 1 else \
            [f"高音的哔哔声{k}" for k in range(5)]
        rows.append(",".join([f'"{name}"', *(f'"{c}"' for c in caps)]))
    csv = root / "clotho_captions_development.csv"
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return csv


def hf_dataset(root: Path, rows: int = 6) -> tuple[Path, Path]:
    """(a Parquet file with the audio embedded, as the Hub serves it; a save_to_disk folder): columns audio and
    sentence (Common Voice's name for the transcript)."""
    from datasets import Audio, Dataset
    from datasets.table import embed_table_storage
    src = root / "clips"
    src.mkdir(parents=True, exist_ok=True)
    paths, text = [], []
    for i in range(rows):
        pitch, count = list(PITCHES)[i % len(PITCHES)], list(COUNTS)[i % len(COUNTS)]
        paths.append(str(src / f"c{i}.flac"))
        sf.write(paths[-1], beep_clip(pitch, count, 200 + i), SR)
        text.append(f"I hear {COUNTS[count]} {pitch} beeps")
    ds = Dataset.from_dict({"audio": paths, "sentence": text}).cast_column("audio", Audio())
    embedded = ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    parquet = root / "hub" / "train-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    embedded.to_parquet(str(parquet))
    ds.save_to_disk(str(root / "saved"))
    return parquet, root / "saved"


def tiny_tts(folder: Path) -> Path:
    """A randomly initialised VITS (transformers' MMS-TTS architecture) with a character vocabulary: speech-shaped
    noise at 16 kHz, enough to exercise the text-to-speech pipeline end to end. `speaking_rate` keeps clips short."""
    import json

    from transformers import VitsConfig, VitsModel, VitsTokenizer, set_seed
    folder.mkdir(parents=True, exist_ok=True)
    chars = ["<pad>", *"abcdefghijklmnopqrstuvwxyz '.,?!"]
    (folder / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    VitsTokenizer(str(folder / "vocab.json"), language=None, add_blank=True, normalize=True,
                  phonemize=False).save_pretrained(folder)
    config = VitsConfig(vocab_size=len(chars), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                        flow_size=16, spectrogram_bins=33, upsample_initial_channel=16, upsample_rates=[8, 8, 4],
                        upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
                        prior_encoder_num_flows=1, posterior_encoder_num_wavenet_layers=1,
                        prior_encoder_num_wavenet_layers=1, duration_predictor_filter_channels=16,
                        depth_separable_num_layers=1, sampling_rate=SR, speaking_rate=8.0)
    set_seed(0)
    VitsModel(config).save_pretrained(folder)
    return folder
