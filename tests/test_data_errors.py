import json

import pytest

from tests.conftest import conv
from vita_trainer.data.dataset import LazySupervisedDataset, read_samples
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
from vita_api.errors import ConfigError, DataError


def make_proc(tok, cfg, media_dir, max_len=512):
    reg = Registry(image_folders={"s": str(media_dir)}, audio_root=str(media_dir), base_dir=str(media_dir))
    return SampleProcessor(tok, MediaSpec.from_config(cfg), reg, max_len), reg


def run(proc, raw):
    return proc(parse_sample(raw, file="data.json", index=0), "data.json")


def test_unknown_set_is_a_clear_error_not_keyerror_none(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir)
    with pytest.raises(DataError) as e:
        run(proc, {"id": "s1", "set": "nope", "image": "red.png", "conversations": conv(("<image>\nq", "a"))})
    msg = str(e.value)
    assert "sample=s1" in msg and "field=set" in msg and "'nope'" in msg and "image_folders" in msg
    with pytest.raises(DataError, match="no `set` field"):
        run(proc, {"id": "s2", "image": "red.png", "conversations": conv(("<image>\nq", "a"))})


@pytest.mark.parametrize("raw,field", [
    ({"id": "p1", "set": "s", "image": ["red.png", "red.png"], "conversations": conv(("<image>\nq", "a"))}, "image"),
    ({"id": "p2", "audio": ["one.wav"], "conversations": conv(("q", "a"))}, "audio"),
    ({"id": "p3", "conversations": conv(("<audio> q", "a"))}, "audio"),
])
def test_placeholder_count_mismatch(raw, field):
    with pytest.raises(DataError) as e:
        parse_sample(raw, file="data.json", index=0)
    assert e.value.field == field and e.value.sample_id == raw["id"] and e.value.reason == "placeholder"


@pytest.mark.parametrize("raw,field", [
    ({"conversations": conv(("q", "a"))}, "id"),
    ({"id": "x", "conversations": []}, "conversations"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}]}, "conversations[0].from"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
     "conversations[1].from"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"}]}, "conversations"),
])
def test_schema_errors_name_the_field(raw, field):
    with pytest.raises(DataError) as e:
        parse_sample(raw, file="data.json", index=3)
    assert e.value.field == field and e.value.file == "data.json"


def test_missing_and_corrupt_media(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir)
    cases = [({"id": "m1", "set": "s", "image": "gone.png", "conversations": conv(("<image>\nq", "a"))},
              "missing_file", "image[0]"),
             ({"id": "m2", "set": "s", "image": "corrupt.png", "conversations": conv(("<image>\nq", "a"))},
              "corrupt_file", "image[0]"),
             ({"id": "m3", "audio": ["empty.wav"], "conversations": conv(("<audio>\nq", "a"))},
              "corrupt_file", "audio[0]")]
    for raw, reason, field in cases:
        with pytest.raises(DataError) as e:
            run(proc, raw)
        assert (e.value.reason, e.value.field, e.value.sample_id) == (reason, field, raw["id"])


def test_short_audio_is_counted(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir)
    run(proc, {"id": "a", "audio": ["short.wav"], "conversations": conv(("<audio>\nq", "a"))})
    run(proc, {"id": "b", "audio": ["one.wav"], "conversations": conv(("<audio>\nq", "a"))})
    assert proc.warnings.audio_too_short == 1 and proc.warnings.audio_too_long == 0


def test_fully_masked_sample_is_an_error_not_loss_zero(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir, max_len=20)
    with pytest.raises(DataError) as e:  # the reply falls beyond model_max_length: nothing left to train
        run(proc, {"id": "long", "conversations": conv(("word " * 50, "answer"))})
    assert e.value.reason == "fully_masked" and "loss is 0" in str(e.value)


def test_truncation_through_media_is_an_error(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir, max_len=40)  # one tile is 16 tokens; wide.png makes 3+1
    with pytest.raises(DataError) as e:
        run(proc, {"id": "t", "set": "s", "image": "wide.png", "conversations": conv(("<image>\nq", "a"))})
    assert e.value.reason == "truncated"


def test_image_expands_to_tiles_times_tokens(tok, tiny_cfg, media_dir):
    proc, _ = make_proc(tok, tiny_cfg, media_dir)
    out = run(proc, {"id": "w", "set": "s", "image": "wide.png", "conversations": conv(("<image>\nq", "a"))})
    n_tiles = out["pixel_values"].shape[0]
    assert n_tiles == 4  # 3:1 -> 3 tiles + thumbnail
    assert int((out["input_ids"] == tiny_cfg.image_token_id).sum()) == n_tiles * tiny_cfg.tokens_per_tile


def write_registry(media_dir, samples):
    (media_dir / "chat.json").write_text(json.dumps(samples))
    return Registry(image_folders={"s": str(media_dir)}, audio_root=str(media_dir), base_dir=str(media_dir),
                    datasets={"d": {"chat_path": "chat.json"}}, mixtures={"mix": ["d"]})


def test_dataset_skip_mode_counts_and_never_loses_silently(tok, tiny_cfg, media_dir):
    samples = [{"id": "ok", "set": "s", "image": "red.png", "conversations": conv(("<image>\nq", "a"))},
               {"id": "bad", "set": "s", "image": "corrupt.png", "conversations": conv(("<image>\nq", "a"))},
               {"id": "unknown-set", "set": "zzz", "image": "red.png", "conversations": conv(("<image>\nq", "a"))}]
    reg = write_registry(media_dir, samples)
    proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), reg, 512)
    with pytest.raises(DataError, match="zzz"):  # default: fail, at construction, before any training
        LazySupervisedDataset(reg, "mix", proc)
    ds = LazySupervisedDataset(reg, "mix", proc, skip_bad_samples=True)
    assert len(ds) == 2 and ds.skipped["invalid"] == 1
    item = ds[1]  # the corrupt one: skipped to the next sample, and the skip travels with the batch
    assert item["id"] == "ok" and item["skipped_reasons"] == ["corrupt_file"]
    assert ds.skipped["corrupt_file"] == 1


def test_registry_and_chat_file_errors(tmp_path):
    with pytest.raises(ValueError, match="names datasets"):
        Registry(datasets={}, mixtures={"m": ["missing"]})
    with pytest.raises(ConfigError, match="neither a mixture nor a dataset"):
        Registry().mixture("Pretrain_video0")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1,}')
    with pytest.raises(DataError, match="line 1"):
        read_samples(bad)
    jl = tmp_path / "x.jsonl"
    jl.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [s["id"] for s in read_samples(jl)] == ["a", "b"]
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"id": "é"}]'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_samples(latin)


def test_long_audio_is_counted(tok, tiny_cfg, media_dir):
    reg = Registry(audio_root=str(media_dir), base_dir=str(media_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg, max_audio_seconds=0.8), reg, 512)
    run(proc, {"id": "long", "audio": ["one.wav"], "conversations": conv(("<audio>\nq", "a"))})
    assert proc.warnings.audio_too_long == 1


def test_video_sample_expands_to_one_tile_per_frame(tok, tiny_cfg, media_dir):
    from PIL import Image
    frames = [Image.new("RGB", (40, 30), (i * 20, 0, 0)) for i in range(10)]
    frames[0].save(media_dir / "clip.gif", save_all=True, append_images=frames[1:], duration=100)
    reg = Registry(video_root=str(media_dir), base_dir=str(media_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), reg, 1024)
    out = run(proc, {"id": "v", "video": "clip.gif", "conversations": conv(("<video>\nWhat happens?", "red"))})
    n = out["pixel_values"].shape[0]
    assert 4 <= n <= 16  # 1 s at 10 fps, sampled at 3 fps, then at least 4 frames
    assert int((out["input_ids"] == tiny_cfg.image_token_id).sum()) == n * tiny_cfg.tokens_per_tile
    (media_dir / "clip.mp4").write_bytes(b"\x00" * 64)  # MP4 decodes through PyAV: this one is garbage
    with pytest.raises(DataError, match=r"field=video\] video .*clip.mp4 cannot be decoded: clip.mp4: .*Invalid data"):
        run(proc, {"id": "v2", "video": "clip.mp4", "conversations": conv(("<video>\nq", "a"))})
    (media_dir / "clip.xyz").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="unsupported video format '.xyz'; supported: .avi, .m4v, .mkv"):
        run(proc, {"id": "v3", "video": "clip.xyz", "conversations": conv(("<video>\nq", "a"))})
