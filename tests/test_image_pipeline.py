"""The device image pipeline: the host only decodes (uint8 + tile grid), the model tiles on its device. Same tokens
and tile layout as the host PIL path, pixels within a stated bound, and the same loss."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import conv
from tests.test_data_errors import write_registry
from vita_trainer.data.collator import MultimodalCollator, PackedCollator, stack_images
from vita_trainer.data.image import IMAGENET_MEAN, IMAGENET_STD, decode_for_device, tile_image, tiles_to_tensor
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.sample import parse_sample
from vita_api.errors import ConfigError
from vita_trainer.model.builder import build_model
from vita_trainer.model.image_tiles import tiles_from_images


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus sensor-like noise: closer to a photo than pure noise."""
    rng = np.random.default_rng(seed)
    x, y = np.linspace(0, 1, width)[None, :, None], np.linspace(0, 1, height)[:, None, None]
    base = (np.sin(x * np.array([13, 7, 3]) + y * np.array([5, 11, 17])) * 0.5 + 0.5) * 220
    return (base + rng.normal(0, 6, (height, width, 3))).clip(0, 255).astype("uint8")


def jpeg(array: np.ndarray) -> io.BytesIO:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    out.seek(0)
    return out


def both_paths(data: io.BytesIO, dynamic: bool = True):
    with Image.open(data) as im:
        im.load()
        host = tiles_to_tensor(tile_image(im, 448, 12, dynamic=dynamic), IMAGENET_MEAN, IMAGENET_STD)
    data.seek(0)
    with Image.open(data) as im:
        pixels, grid = decode_for_device(im, 448, 12, dynamic=dynamic)
    batch = stack_images([pixels], [grid])
    device = tiles_from_images(batch["images"], batch["image_sizes"], batch["image_grids"], 448, IMAGENET_MEAN,
                               IMAGENET_STD)
    return host, device, pixels, grid


# The bound (normalised units; 1/255 of range is ~0.017 here). Torch's antialiased bicubic and Pillow's differ in
# rounding (Pillow rounds to uint8 between resize and normalisation) and at the borders; JPEG draft decoding
# (a reduced DCT scale) adds its own small difference; white noise, all high frequencies, is the worst case.
@pytest.mark.parametrize("case,size,max_bound,mean_bound", [
    ("photo 640x480, 4x3 grid + thumbnail", (640, 480), 0.05, 0.01),
    ("photo 300x1000, 1x3 grid + thumbnail", (300, 1000), 0.05, 0.01),
    ("photo 4000x3000, JPEG draft at 1/2", (4000, 3000), 0.15, 0.02),
    ("white noise 640x480", None, 0.35, 0.01),
])
def test_device_tiles_match_the_host_pil_tiles_within_the_bound(case, size, max_bound, mean_bound):
    array = photo(*size) if size else (np.random.default_rng(1).random((480, 640, 3)) * 255).astype("uint8")
    host, device, pixels, grid = both_paths(jpeg(array))
    assert host.shape == device.shape and grid[2] == 1
    diff = (host - device).abs()
    assert diff.max() <= max_bound and diff.mean() <= mean_bound, (case, diff.max().item(), diff.mean().item())
    if size == (4000, 3000):  # decoded at half size, never below the 1792x1344 grid
        assert tuple(pixels.shape) == (1500, 2000, 3)


def test_untiled_images_and_uint8_batches():
    host, device, pixels, grid = both_paths(jpeg(photo(96, 32)), dynamic=False)
    assert grid == (1, 1, 0, 1) and host.shape == device.shape == (1, 3, 448, 448)
    assert (host - device).abs().max() <= 0.05
    small, wide = torch.full((2, 3, 3), 7, dtype=torch.uint8), torch.full((4, 5, 3), 9, dtype=torch.uint8)
    batch = stack_images([small, wide], [(1, 1, 0, 1), (2, 1, 1, 0)])
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (2, 4, 5, 3)
    assert batch["image_sizes"] == [[2, 3], [4, 5]]
    assert batch["image_grids"] == [[1, 1, 0, 1], [2, 1, 1, 0]]
    assert (batch["images"][0, :2, :3] == 7).all() and (batch["images"][1] == 9).all()


@pytest.fixture
def image_samples(tok, tiny_cfg, media_dir):
    Image.fromarray(photo(120, 64)).save(media_dir / "photo.jpg", quality=90)
    raws = [{"id": "a", "set": "s", "image": "photo.jpg", "conversations": conv(("<image>\nq", "a photo"))},
            {"id": "t", "conversations": conv(("hello", "world"))},
            {"id": "b", "set": "s", "image": ["wide.png", "red.png"],
             "conversations": conv(("<image><image>\nboth?", "blue and red"))},
            {"id": "c", "audio": ["one.wav"], "set": "s", "image": "photo.jpg",
             "conversations": conv(("<image><audio>\nq", "a tone"))}]
    reg = write_registry(media_dir, raws)

    def process(pipeline):
        proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), reg, 1024, system_prompt="S",
                               image_pipeline=pipeline)
        return [proc(parse_sample(r, file=str(media_dir / "chat.json"), index=i), str(media_dir / "chat.json"))
                for i, r in enumerate(raws)]
    return process


def test_the_device_pipeline_gives_the_same_tokens_and_loss(tok, tiny_cfg, image_samples):
    host, device = image_samples("host"), image_samples("device")
    for h, d in zip(host, device):
        assert torch.equal(h["input_ids"], d["input_ids"]) and torch.equal(h["labels"], d["labels"])
        assert "pixel_values" not in d and all(im.dtype == torch.uint8 for im in d.get("images", []))
    torch.manual_seed(0)
    model = build_model(tiny_cfg).float().eval()
    for collate in (MultimodalCollator(tok.pad_token_id), PackedCollator(tok.pad_token_id, 4096)):
        hb, db = collate(host), collate(device)
        assert "pixel_values" not in db and db["images"].dtype == torch.uint8 and len(db["images"]) == 4
        tiles = model.tiles(**{k: db[k] for k in ("images", "image_sizes", "image_grids")})
        assert tiles.shape == hb["pixel_values"].shape and (tiles - hb["pixel_values"]).abs().mean() < 0.02
        with torch.no_grad():
            a, b = model(**hb).loss, model(**db).loss
        assert torch.isclose(a, b, atol=2e-3, rtol=0), (a.item(), b.item())


def test_an_unknown_pipeline_is_refused(tok, tiny_cfg, media_dir):
    with pytest.raises(ConfigError, match="--image_pipeline 'gpu'"):
        SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), write_registry(media_dir, []), 512,
                        image_pipeline="gpu")


def test_auto_picks_the_device_pipeline_only_where_there_is_a_gpu_and_never_under_vita15():
    from vita_trainer.train.main import image_pipeline
    assert image_pipeline("auto", cuda=True) == "device" and image_pipeline("auto", cuda=False) == "host"
    assert image_pipeline("auto", cuda=True, chat_format="vita15") == "host"
    assert image_pipeline("auto", cuda=True, chat_format="qwen2p5_instruct") == "host"
    assert image_pipeline("host", cuda=True) == "host" and image_pipeline("device", cuda=False) == "device"
