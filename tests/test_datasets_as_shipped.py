"""The guide's datasets as downloaded: LLaVA and ShareGPT4V JSON without `set`, media folders named once per
dataset in the registry, and video as users have it (MP4 and friends)."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from vita_trainer.data.dataset import LazySupervisedDataset
from vita_trainer.data.registry import load_registry
from vita_trainer.tools.context import ToolOptions, build_processor
from vita_trainer.tools.data_cli import main as data_main

# Shaped like the public files: llava_v1_5_mix665k.json (COCO sample with a string id, text-only sample with an
# int id and the extra "model" field) and ShareGPT4V (paths with a leading source folder).
LLAVA = [
    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                       {"from": "gpt", "value": "The bus in the image is white and red."}]},
    {"id": 4012, "model": "", "conversations": [{"from": "human", "value": "Name a prime number."},
                                                 {"from": "gpt", "value": "Seven."}]},
]
SHAREGPT4V = [
    {"id": "sa_1", "image": "sam/images/sa_1.jpg",
     "conversations": [{"from": "human", "value": "What is in the image?\n<image>"},
                       {"from": "gpt", "value": "A red square."}]},
    {"id": "000000000009", "image": "coco/train2017/000000000009.jpg",
     "conversations": [{"from": "human", "value": "<image>\nDescribe the picture."},
                       {"from": "gpt", "value": "A plate of food."}]},
]


@pytest.fixture
def downloads(tmp_path, tok):
    data = tmp_path / "datasets"
    for rel, color in (("coco/train2017/000000033471.jpg", "red"), ("coco/train2017/000000000009.jpg", "blue"),
                       ("sam/images/sa_1.jpg", "green")):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), color).save(data / rel)
    (data / "llava_v1_5_mix665k.json").write_text(json.dumps(LLAVA))
    (data / "sharegpt4v_instruct_gpt4-vision_cap100k.json").write_text(json.dumps(SHAREGPT4V))
    from vita_trainer.model.builder import tiny_config
    tok.save_pretrained(tmp_path / "model")
    tiny_config(tok).save_pretrained(tmp_path / "model")
    return tmp_path


def registry_file(root, **datasets) -> str:
    path = root / "registry.yaml"
    path.write_text(yaml.safe_dump({"image_folders": {"coco": "datasets"}, "datasets": datasets,
                                    "mixtures": {"sft": sorted(datasets)}}))
    return str(path)


def check(root, registry, capsys, *extra):
    code = data_main(["check", "--registry", registry, "--model", str(root / "model"), "--workers", "1",
                      "--model_max_length", "600", *extra])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("llava_entry", [{"image_folder": "datasets"}, {"set": "coco"}],
                         ids=["image_folder", "set"])
def test_llava_and_sharegpt4v_files_check_clean_and_train_from_the_same_images(downloads, capsys, llava_entry):
    registry = registry_file(downloads, llava665k={"chat_path": "datasets/llava_v1_5_mix665k.json", **llava_entry},
                             sharegpt4v={"chat_path": "datasets/sharegpt4v_instruct_gpt4-vision_cap100k.json",
                                         "image_folder": "datasets"})
    code, out = check(downloads, registry, capsys)
    assert code == 0 and out.startswith("4 samples, 0 with problems"), out
    # training resolves the same files through the same rule, and reads their pixels
    proc = build_processor(ToolOptions(registry=registry, model=str(downloads / "model"), model_max_length=600))
    dataset = LazySupervisedDataset(load_registry(registry), "sft", proc)
    resolved = {str(p.relative_to(downloads / "datasets")) for file, s in dataset.entries
                for p in proc.image_paths(s, file)}
    assert resolved == {"coco/train2017/000000033471.jpg", "coco/train2017/000000000009.jpg", "sam/images/sa_1.jpg"}
    items = [dataset[i] for i in range(len(dataset))]
    assert sum(1 for item in items if item.get("pixel_values") is not None) == 3
    assert {str(s.sample_id) for _, s in dataset.entries} == {"000000033471", "4012", "sa_1", "000000000009"}


def test_a_file_without_set_or_folder_names_the_fix(downloads, capsys):
    registry = registry_file(downloads, llava665k={"chat_path": "datasets/llava_v1_5_mix665k.json"})
    code, out = check(downloads, registry, capsys)
    assert code == 1 and "2 samples, 1 with problems" in out
    line = next(line for line in out.splitlines() if "000000033471" in line)
    assert "[set]" in line and "-- fix: name the folder once for the whole file: `image_folder: <folder>`" in line


def test_a_samples_own_set_wins_and_paths_still_may_not_escape(downloads, capsys):
    (downloads / "elsewhere").mkdir()
    Image.new("RGB", (64, 48), "white").save(downloads / "elsewhere" / "own.jpg")
    (downloads / "secret.jpg").write_bytes(b"x")
    samples = [dict(LLAVA[0], id="own", set="other", image="own.jpg"),
               dict(LLAVA[0], id="escape", image="../secret.jpg")]
    (downloads / "datasets" / "mixed.json").write_text(json.dumps(samples))
    path = downloads / "registry.yaml"
    path.write_text(yaml.safe_dump({"image_folders": {"other": "elsewhere"}, "datasets": {
        "mixed": {"chat_path": "datasets/mixed.json", "image_folder": "datasets"}}}))
    code, out = check(downloads, str(path), capsys, "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["sample_id"], p["reason"]) for p in problems] == [("escape", "path_escape")]


def test_registry_refuses_ambiguous_dataset_folders(tmp_path):
    from vita_api.errors import ConfigError
    path = tmp_path / "registry.yaml"
    for datasets, expected in [
        ({"a": {"chat_path": "x.json", "set": "coco", "image_folder": "y"}}, "not both"),
        ({"a": {"chat_path": "x.json", "set": "nope"}}, "set 'nope' is not under image_folders"),
        ({"a": {"chat_path": "x.json", "image_folder": "p"}, "b": {"chat_path": "x.json", "image_folder": "q"}},
         "read the same chat file"),
    ]:
        path.write_text(yaml.safe_dump({"image_folders": {"coco": "c"}, "datasets": datasets}))
        with pytest.raises(ConfigError, match=expected):
            load_registry(path)


def write_mp4(path, frames: int, fps: int, codec: str = "mpeg4"):
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), min(i * 4, 255), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("suffix,codec", [(".mp4", "mpeg4"), (".mkv", "mpeg4"), (".webm", "libvpx")])
def test_container_video_samples_at_the_reference_rate(tmp_path, suffix, codec):
    from vita_trainer.data.video import load_frames, sample_indices
    path = tmp_path / f"clip{suffix}"
    write_mp4(path, frames=60, fps=10, codec=codec)  # 6 s at 10 fps: 3 fps gives 18, capped to 16
    frames = load_frames(path)
    assert len(frames) == len(sample_indices(60, 10.0)) == 16
    assert frames[0].mode == "RGB" and frames[0].size == (64, 48)
    # the frames are the reference's indices, hand-computed (stride 3, then 16 linspace positions of 20)
    every = all_frames(path)
    expected = [every[i] for i in (0, 3, 6, 9, 15, 18, 21, 24, 30, 33, 36, 39, 45, 48, 51, 57)]
    assert all(np.array_equal(np.asarray(f), e) for f, e in zip(frames, expected))


def all_frames(path):
    """Every frame, decoded by PyAV directly (the expectation's source)."""
    import av
    with av.open(str(path)) as container:
        return [np.asarray(f.to_image().convert("RGB")) for f in container.decode(container.streams.video[0])]


def test_a_video_is_decoded_once_and_counted_without_decoding(tmp_path, monkeypatch):
    from vita_trainer.data import video
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames=60, fps=10)
    calls = []
    real = video._decode
    monkeypatch.setattr(video, "_decode", lambda p, wanted: calls.append(wanted) or real(p, wanted))
    assert video.frame_count(path) == 16 and calls == []  # container metadata only
    assert len(video.load_frames(path)) == 16 and len(calls) == 1
    # metadata that overstates the frames: the first pass finds the true count, a second reads its frames
    calls.clear()
    monkeypatch.setattr(video, "_metadata_frames", lambda *a: 100)
    frames = video.load_frames(path)
    assert len(calls) == 2 and len(frames) == 16
    assert np.array_equal(np.asarray(frames[-1]), all_frames(path)[57])


def test_a_broken_video_is_a_clear_error_in_check(downloads, capsys):
    videos = downloads / "videos"
    videos.mkdir()
    write_mp4(videos / "ok.mp4", frames=20, fps=10)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    samples = [{"id": name, "video": f"{name}.mp4",
                "conversations": [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "x"}]}
               for name in ("ok", "broken")]
    (downloads / "datasets" / "video.json").write_text(json.dumps(samples))
    path = downloads / "registry.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"v": {"chat_path": "datasets/video.json", "video_root": "videos"}}}))
    code, out = check(downloads, str(path), capsys, "--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and [(p["sample_id"], p["reason"]) for p in problems] == [("broken", "corrupt_file")]
    assert "broken.mp4" in problems[0]["message"]
