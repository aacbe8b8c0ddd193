"""vita-data check / stats / concat / preprocess on fixtures with every problem planted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image

from tests.conftest import conv
from vita_trainer.tools.data_cli import main as data_main

BIN = Path(sys.executable).parent


def qa(prefix="", q="What color?", a="red"):
    return conv((prefix + q, a))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("planted")
    img, aud = root / "images", root / "audio"
    img.mkdir(), aud.mkdir()
    Image.new("RGB", (32, 32), "red").save(img / "ok.png")  # one tile
    Image.new("RGB", (13 * 20, 20), "red").save(img / "wide.png")           # 13:1
    (img / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    os.symlink(img / "loop_b.png", img / "loop_a.png")
    os.symlink(img / "loop_a.png", img / "loop_b.png")
    (root / "secret.png").write_bytes(b"x")
    tone = lambda s: (0.1 * np.sin(np.arange(int(s * 16000)) / 5)).astype("float32")  # noqa: E731
    sf.write(aud / "ok.wav", tone(1.0), 16000)
    sf.write(aud / "short.wav", tone(0.3), 16000)
    sf.write(aud / "long.wav", tone(3.0), 16000)
    (aud / "empty.wav").write_bytes(b"")
    good = [
        {"id": "good-img", "set": "s", "image": "ok.png", "conversations": qa("<image>\n")},
        {"id": "good-aud", "audio": ["ok.wav"], "conversations": qa("<audio>\n")},
        {"id": "good-txt", "conversations": qa()},
    ]
    bad = [
        ({"id": "p-missing", "set": "s", "image": "gone.png", "conversations": qa("<image>\n")}, "missing_file"),
        ({"id": "p-corrupt", "set": "s", "image": "corrupt.png", "conversations": qa("<image>\n")}, "corrupt_file"),
        ({"id": "p-set", "set": "nope", "image": "ok.png", "conversations": qa("<image>\n")}, "invalid"),
        ({"id": "p-count", "set": "s", "image": ["ok.png", "ok.png"], "conversations": qa("<image>\n")},
         "placeholder"),
        ({"id": "p-escape", "set": "s", "image": "../secret.png", "conversations": qa("<image>\n")}, "path_escape"),
        ({"id": "p-loop", "set": "s", "image": "loop_a.png", "conversations": qa("<image>\n")}, "symlink_loop"),
        ({"id": "p-empty", "audio": ["empty.wav"], "conversations": qa("<audio>\n")}, "corrupt_file"),
        ({"id": "p-short", "audio": ["short.wav"], "conversations": qa("<audio>\n")}, "audio_too_short"),
        ({"id": "p-long", "audio": ["long.wav"], "conversations": qa("<audio>\n")}, "audio_too_long"),
        ({"id": "p-ratio", "set": "s", "image": "wide.png", "conversations": qa("<image>\n")}, "aspect_ratio"),
        ({"id": "p-masked", "conversations": qa("word " * 700, a="answer")}, "fully_masked"),
        ({"id": "p-trunc", "set": "s", "image": "ok.png", "conversations": qa("word " * 700 + "<image>\n")},
         "truncated"),
        ({"id": "p-schema", "conversations": [{"from": "gpt", "value": "hi"}]}, "schema"),
    ]
    chats = root / "chats"
    chats.mkdir()
    (chats / "main.json").write_text(json.dumps(good + [b for b, _ in bad]))
    (chats / "extra.jsonl").write_text("\n".join(json.dumps({**g, "id": g["id"] + "-jl"}) for g in good) + "\n")
    (chats / "truncated.json").write_text('[{"id": "a", "conversations": [')
    (chats / "latin1.json").write_bytes('[{"id": "é", "conversations": []}]'.encode("latin-1"))
    tok.save_pretrained(root / "model")
    from vita_trainer.model.builder import tiny_config
    tiny_config(tok).save_pretrained(root / "model")
    (root / "registry.yaml").write_text(yaml.safe_dump({
        "image_folders": {"s": "images"}, "audio_root": "audio",
        "datasets": {n: {"chat_path": f"chats/{n}.{'jsonl' if n == 'extra' else 'json'}"}
                     for n in ("main", "extra", "truncated", "latin1")},
        "mixtures": {"good": ["main", "extra"]}}))
    expected = {(b["id"], r) for b, r in bad} | {("-", "json"), ("-", "encoding")}
    return root, expected


def check(root, *extra, capsys):
    code = data_main(["check", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                      "--model_max_length", "600", "--max_audio_seconds", "2", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_check_finds_exactly_the_planted_problems(planted, capsys, workers):
    root, expected = planted
    code, report = check(root, "--workers", workers, capsys=capsys)
    found = {(p["sample_id"], p["reason"]) for p in report["problems"]}
    assert found == expected
    assert code == 1 and report["bad_samples"] == len(expected) - 2  # file-level problems have no sample
    by_id = {p["sample_id"]: p for p in report["problems"]}
    assert by_id["p-missing"]["field"] == "image[0]" and by_id["p-missing"]["file"].endswith("main.json")
    assert report["samples"] == 3 + 13 + 3


def test_write_clean_output_passes_check(planted, capsys, tmp_path):
    root, _ = planted
    code, report = check(root, "--workers", "1", "--write-clean", str(tmp_path / "clean"), capsys=capsys)
    assert code == 1
    cleaned = {Path(f).name for f in report["clean_files"]}
    assert cleaned == {"main.json", "extra.json"}
    assert len(json.loads((tmp_path / "clean" / "main.json").read_text())) == 3
    code = data_main(["check", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                      "--model_max_length", "600", "--max_audio_seconds", "2", "--workers", "1", "--json",
                      "--chat", *(str(tmp_path / "clean" / n) for n in cleaned)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["problems"] == [] and out["samples"] == 6


def test_stats_writes_png_and_json(planted, capsys, tmp_path):
    root, _ = planted
    code = data_main(["stats", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                      "--dataset_use", "good", "--workers", "1", "--out", str(tmp_path / "st"),
                      "--model_max_length", "600", "--max_audio_seconds", "2"])
    assert code == 0
    report = json.loads((tmp_path / "st" / "stats.json").read_text())
    assert report["by_modality"]["image"] == 2 and report["by_modality"]["audio"] == 2
    assert report["by_modality"]["text"] == 2 and report["by_modality"]["invalid"] == 13
    assert sum(report["histograms"]["audio_seconds"]["counts"]) == 2
    assert report["audio_seconds"] == {"clips": 2, "mean": pytest.approx(1.0), "hours": pytest.approx(2 / 3600)}
    assert (tmp_path / "st" / "stats.png").stat().st_size > 5000


def test_concat_packs_deterministically_and_keeps_media(planted, tmp_path, tok):
    root, _ = planted
    samples = [{"id": f"s{i}", "set": "s", "image": "ok.png", "conversations": qa("<image>\n")} for i in range(6)]
    samples += [{"id": f"a{i}", "audio": ["ok.wav"], "conversations": qa("<audio>\n")} for i in range(4)]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(samples))
    outs = []
    for name in ("o1.json", "o2.json"):
        assert data_main(["concat", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                          "--chat", str(src), "--max-tokens", "700", "--seed", "3", "--output",
                          str(tmp_path / name)]) == 0
        outs.append(json.loads((tmp_path / name).read_text()))
    assert outs[0] == outs[1]
    packed = outs[0]
    assert len(packed) < len(samples)
    assert sum(len(p.get("image", [])) for p in packed) == 6 and sum(len(p.get("audio", [])) for p in packed) == 4
    for p in packed:
        assert not ("image" in p and "audio" in p and p.get("set") is None)
        assert len(p["conversations"]) % 2 == 0
    # packed samples are still valid and within the limit
    code = data_main(["check", "--registry", str(root / "registry.yaml"), "--model", str(root / "model"),
                      "--model_max_length", "1500", "--workers", "1", "--chat", str(tmp_path / "o1.json")])
    assert code == 0


@pytest.mark.subprocess
def test_preprocess_is_idempotent_and_never_overwrites(planted, tmp_path):
    root, _ = planted
    big = tmp_path / "in"
    big.mkdir()
    Image.new("RGB", (3000, 1500), "blue").save(big / "big.jpg")
    sf.write(big / "a44k.flac", np.zeros(44100, dtype="float32"), 44100)
    out = tmp_path / "out"
    r = subprocess.run([str(BIN / "vita-data"), "preprocess-images", str(big), str(out), "--max-side", "1000",
                        "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1, up to date 0" in r.stdout
    assert Image.open(out / "big.jpg").size == (1000, 500)
    r = subprocess.run([str(BIN / "vita-data"), "preprocess-images", str(big), str(out)], capture_output=True,
                       text=True)
    assert "wrote 0, up to date 1" in r.stdout
    r = subprocess.run([str(BIN / "vita-data"), "preprocess-audio", str(big), str(out), "--fbank"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "wrote 1" in r.stdout
    info = sf.info(str(out / "a44k.wav"))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 16000)
    assert np.load(out / "a44k.fbank.npy").shape == (98, 80)
    r = subprocess.run([str(BIN / "vita-data"), "preprocess-images", str(big), str(big / "sub")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "never overwritten" in r.stderr
    assert Image.open(big / "big.jpg").size == (3000, 1500)
