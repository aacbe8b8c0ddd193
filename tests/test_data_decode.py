"""`vita-data check --decode`: files whose headers are fine but whose data is not (a truncated JPEG, a WAV cut
short of its header's length, an MP4 cut after its index) pass the header check and are named by the decode."""

import json

import av
import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

from tests.conftest import conv
from vita_trainer.tools.data_cli import main as data_main


def write_mp4(path, frames: int = 60, fps: int = 30) -> None:
    # the index (moov) first, as streaming MP4s have it: a file cut later keeps metadata for every frame
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # noise: every frame costs bytes
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def media(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("decode")
    for d in ("images", "audio", "video"):
        (root / d).mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    for name in ("ok.jpg", "truncated.jpg"):
        photo.save(root / "images" / name, quality=90)
    cut(root / "images" / "truncated.jpg", 0.6)
    clip = (0.3 * np.sin(np.arange(16000 * 2) * 0.05)).astype(np.float32)
    for name in ("ok.wav", "cut.wav"):
        sf.write(root / "audio" / name, clip, 16000)
    cut(root / "audio" / "cut.wav", 0.5)  # the RIFF header still says 2 s
    for name in ("ok.mp4", "broken.mp4"):
        write_mp4(root / "video" / name)
    cut(root / "video" / "broken.mp4", 0.5)
    samples = [
        {"id": "good", "set": "s", "image": "ok.jpg", "audio": ["ok.wav"],
         "conversations": conv(("<image>\n<audio>\nWhat is it?", "A tone."))},
        {"id": "good-video", "video": "ok.mp4", "conversations": conv(("<video>\nWhat happens?", "Noise."))},
        {"id": "bad-jpeg", "set": "s", "image": "truncated.jpg", "conversations": conv(("<image>\nWhat?", "A."))},
        {"id": "bad-wav", "audio": ["cut.wav"], "conversations": conv(("<audio>\nWhat?", "A."))},
        {"id": "bad-mp4", "video": "broken.mp4", "conversations": conv(("<video>\nWhat?", "A."))},
    ]
    (root / "chats.json").write_text(json.dumps(samples))
    tok.save_pretrained(root / "model")
    from vita_trainer.model.builder import tiny_config
    tiny_config(tok).save_pretrained(root / "model")
    (root / "registry.yaml").write_text(yaml.safe_dump({
        "image_folders": {"s": "images"}, "audio_root": "audio", "video_root": "video",
        "datasets": {"d": {"chat_path": "chats.json"}}}))
    return root


def check(root, *extra, capsys):
    code = data_main(["check", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                      "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_headers_alone_pass_the_truncated_jpeg_and_the_cut_wav(media, capsys):
    _, report = check(media, "--workers", "1", capsys=capsys)
    flagged = {p["sample_id"] for p in report["problems"]}
    assert not flagged & {"good", "good-video", "bad-jpeg", "bad-wav"}, report["problems"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_decode_names_each_broken_file_and_nothing_else(media, capsys, workers):
    code, report = check(media, "--decode", "--workers", workers, capsys=capsys)
    by_id = {p["sample_id"]: p for p in report["problems"]}
    assert set(by_id) == {"bad-jpeg", "bad-wav", "bad-mp4"} and code == 1
    assert report["samples"] == 5
    assert by_id["bad-jpeg"]["field"] == "image[0]" and "truncated.jpg" in by_id["bad-jpeg"]["message"]
    assert by_id["bad-wav"]["field"] == "audio[0]" and "cut.wav" in by_id["bad-wav"]["message"]
    assert by_id["bad-mp4"]["field"] == "video" and "broken.mp4" in by_id["bad-mp4"]["message"]
    for p in by_id.values():
        assert p["reason"] == "corrupt_file" and p["file"].endswith("chats.json") and "--decode" in p["hint"]
