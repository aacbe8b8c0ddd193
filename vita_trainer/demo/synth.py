"""Synthetic multimodal data the tiny model can learn on 2 CPU cores (see shared/docs/demo-feasibility.md).

Images: one coloured shape on a light background. Audio: beeps whose pitch class and count are the answers.
Every sample asks both of its questions as a two-turn chat; multi-turn samples teach about twice as much.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (235, 200, 20),
           "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
PITCHES = {"low": 300.0, "middle": 700.0, "high": 1500.0}
COUNTS = {1: "one", 2: "two", 3: "three", 4: "four"}
IMAGE_QUESTIONS = (("What color is the shape?", "color"), ("What shape is it?", "shape"))
AUDIO_QUESTIONS = (("What pitch are the beeps?", "pitch"), ("How many beeps are there?", "count"))
SR = 16000


def draw_shape(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(225, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 4, size // 3)
    cx, cy = rng.randint(r + 2, size - r - 2), rng.randint(r + 2, size - r - 2)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def beeps(pitch: str, count: int, rng: random.Random) -> np.ndarray:
    beep, gap = 0.12, 0.1
    lead = rng.uniform(0.05, 0.2)
    total = lead + count * (beep + gap) + rng.uniform(0.1, 0.3)
    wave = np.zeros(int(total * SR), dtype=np.float32)
    t = np.arange(int(beep * SR)) / SR
    f = PITCHES[pitch] * rng.uniform(0.95, 1.05)
    tone = (0.5 * np.sin(2 * np.pi * f * t) * np.hanning(t.size)).astype(np.float32)
    for k in range(count):
        start = int((lead + k * (beep + gap)) * SR)
        wave[start:start + tone.size] += tone
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, 0.005, wave.size).astype(np.float32)
    return wave + noise


def _two_turn(placeholder: str, qa: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """Both questions, in random order: a fixed order lets the model ignore the question text."""
    qa = list(qa)
    rng.shuffle(qa)
    convs = []
    for i, (q, a) in enumerate(qa):
        convs += [{"from": "human", "value": (placeholder + "\n" if i == 0 else "") + q}, {"from": "gpt", "value": a}]
    return convs


def generate(root: str | Path, n_image: int = 1200, n_audio: int = 600, n_text: int = 600, n_eval: int = 60,
             seed: int = 0) -> dict:
    """Write images, audio, chat JSON files and a registry YAML under `root`. Returns file paths."""
    root = Path(root)
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "chats").mkdir(parents=True, exist_ok=True)

    def image_sample(i, split):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        name = f"{split}_{i:05d}.png"
        draw_shape(colour, shape, rng).save(root / "images" / name)
        answers = {"color": colour, "shape": shape}
        return {"set": "shapes", "id": f"img-{split}-{i}", "image": name,
                "conversations": _two_turn("<image>", [(q, answers[k]) for q, k in IMAGE_QUESTIONS], rng)}

    def audio_sample(i, split):
        pitch, count = rng.choice(list(PITCHES)), rng.choice(list(COUNTS))
        name = f"{split}_{i:05d}.wav"
        sf.write(root / "audio" / name, beeps(pitch, count, rng), SR)
        answers = {"pitch": pitch, "count": COUNTS[count]}
        return {"id": f"aud-{split}-{i}", "audio": [name],
                "conversations": _two_turn("<audio>", [(q, answers[k]) for q, k in AUDIO_QUESTIONS], rng)}

    def text_sample(i):
        # Stand-in for the pretrained LLM: learn to answer questions in one word from a text description.
        if rng.random() < 0.5:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            ctx, qa = f"There is a {colour} {shape}.", [(q, {"color": colour, "shape": shape}[k])
                                                        for q, k in IMAGE_QUESTIONS]
        else:
            pitch, count = rng.choice(list(PITCHES)), rng.choice(list(COUNTS))
            ctx, qa = f"I hear {COUNTS[count]} {pitch} beeps.", [(q, {"pitch": pitch, "count": COUNTS[count]}[k])
                                                              for q, k in AUDIO_QUESTIONS]
        return {"id": f"txt-{i}", "conversations": _two_turn(ctx, qa, rng)}

    chats = {
        "text": [text_sample(i) for i in range(n_text)],
        "image_train": [image_sample(i, "train") for i in range(n_image)],
        "audio_train": [audio_sample(i, "train") for i in range(n_audio)],
        "image_eval": [image_sample(i, "eval") for i in range(n_eval)],
        "audio_eval": [audio_sample(i, "eval") for i in range(n_eval)],
    }
    for name, samples in chats.items():
        (root / "chats" / f"{name}.json").write_text(json.dumps(samples, indent=1))
    registry = {
        "image_folders": {"shapes": "images"}, "audio_root": "audio",
        "datasets": {name: {"chat_path": f"chats/{name}.json"} for name in chats},
        "mixtures": {"demo_text": ["text"], "demo_image": ["image_train"], "demo_audio": ["audio_train"],
                     "demo_multimodal": ["image_train", "audio_train"]},
    }
    import yaml
    (root / "registry.yaml").write_text(yaml.safe_dump(registry, sort_keys=False))
    return {"registry": str(root / "registry.yaml"), "chats": {k: str(root / "chats" / f"{k}.json") for k in chats}}


def corpus(chat_files: list[str]) -> list[str]:
    """All conversation text and the system prompts, for training the demo's tiny tokenizer."""
    from ..data.chat_format import DEFAULT_FORMAT, FORMATS
    out = list(FORMATS[DEFAULT_FORMAT].system_prompts.values()) * 50
    for f in chat_files:
        for s in json.loads(Path(f).read_text()):
            out += [t["value"] for t in s["conversations"]]
    return out
