"""`vita-data speak`: a share of an image dataset's questions read aloud by a text-to-speech model (a tiny random
VITS through transformers' pipeline), seeded and resumable, registered beside its source."""

import json

import numpy as np
import soundfile as sf
import yaml
from PIL import Image

from tests import audio_corpora_fixtures as corpora
from vita_trainer.tools.data_cli import main as data_main


def image_dataset(root, n=12):
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (32, 32), "red").save(root / "images" / f"{i}.png")
        rows.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]})
    rows.append({"id": "only-image", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "red"}]})
    (root / "chat.json").write_text(json.dumps(rows))
    (root / "registry.yaml").write_text(yaml.safe_dump({"datasets": {
        "shapes": {"chat_path": "chat.json", "image_folder": "images"}}}))
    return root / "registry.yaml"


def test_half_the_questions_become_speech_and_a_rerun_synthesizes_nothing(tmp_path, capsys):
    registry = image_dataset(tmp_path / "data")
    tts = corpora.tiny_tts(tmp_path / "tts")
    out = tmp_path / "data" / "shapes_spoken.json"
    argv = ["speak", "shapes", "--registry", str(registry), "--model", str(tts), "--out", str(out),
            "--share", "0.5", "--seed", "3"]
    assert data_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    got = json.loads(out.read_text())
    spoken = [s for s in got if "audio" in s]
    assert summary["samples"] == 13 and summary["spoken"] == len(spoken)
    assert 2 <= len(spoken) <= 11  # a seeded draw of about half of 12 (the image-only one has no words to speak)
    assert all(s["conversations"][0]["value"] == "<image>\n<audio>" for s in spoken)
    assert all(s["conversations"][0]["value"] == "<image>\nWhat color is the shape?"
               for s in got if "audio" not in s and s["id"] != "only-image")
    clip = tmp_path / "data" / "shapes_spoken_speech" / spoken[0]["audio"][0]
    wave, rate = sf.read(clip)
    assert rate == 16000 and wave.size > 0 and np.abs(wave).max() > 0

    reg = yaml.safe_load(registry.read_text())
    assert reg["datasets"]["shapes_spoken"] == {"chat_path": "shapes_spoken.json", "audio_root": "shapes_spoken_speech",
                                                "image_folder": "images", "task": "qa"}
    assert reg["mixtures"]["Pretrain_audio"] == ["shapes_spoken"]
    assert data_main(["check", "--registry", str(registry), "--dataset_use", "shapes_spoken", "--decode",
                      "--workers", "1"]) == 0

    stamps = {p: p.stat().st_mtime_ns for p in clip.parent.iterdir()}
    before = out.read_bytes()
    assert data_main(argv) == 0
    assert out.read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in clip.parent.iterdir()} == stamps
