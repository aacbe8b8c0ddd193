"""Untiled images and video frames go through what the reference's CLIP image processor does (short side to 448,
bicubic; centre crop; rescale; normalise), and `pad` pastes the image on a square of the mean colour first. The
expected pixels come from transformers' own CLIP image processor (PIL backend), configured as InternViT's
preprocessor_config.json, and from canvases the test builds with numpy."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from tests.conftest import conv
from tests.test_data_errors import write_registry
from tests.test_image_pipeline import photo
from vita_trainer.data.collator import stack_images
from vita_trainer.data.image import IMAGENET_MEAN, IMAGENET_STD, decode_for_device, tile_image, tiles_to_tensor
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.sample import parse_sample
from vita_trainer.model.image_tiles import tiles_from_images

CLIP = CLIPImageProcessorPil(size={"shortest_edge": 448}, crop_size={"height": 448, "width": 448},
                             do_center_crop=True, resample=3, image_mean=list(IMAGENET_MEAN),
                             image_std=list(IMAGENET_STD))
SIZES = [(640, 480), (1344, 448), (448, 896), (641, 479), (300, 301), (448, 448)]


def clip(image: Image.Image) -> torch.Tensor:
    return CLIP(images=image, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("size", SIZES)
def test_an_untiled_image_is_the_clip_processors_centre_crop(size):
    image = Image.fromarray(photo(*size, seed=size[0]))
    host = tiles_to_tensor(tile_image(image, 448, dynamic=False), IMAGENET_MEAN, IMAGENET_STD)
    assert host.shape == (1, 3, 448, 448)
    assert (host - clip(image)).abs().max() < 1e-5
    if size[0] != size[1]:  # a squash (today's bug) differs by far more than rounding
        squashed = tiles_to_tensor([image.resize((448, 448), Image.BICUBIC)], IMAGENET_MEAN, IMAGENET_STD)
        assert (squashed - clip(image)).abs().max() > 0.3


@pytest.mark.parametrize("size", SIZES[:4])
def test_the_device_path_follows_the_same_geometry(size):
    image = Image.fromarray(photo(*size, seed=size[0]))
    pixels, grid = decode_for_device(image, 448, dynamic=False)
    batch = stack_images([pixels], [grid])
    device = tiles_from_images(batch["images"], batch["image_sizes"], batch["image_grids"], 448, IMAGENET_MEAN,
                               IMAGENET_STD)
    diff = (device - clip(image)).abs()
    assert diff.max() <= 0.05 and diff.mean() <= 0.01, (diff.max().item(), diff.mean().item())


def _padded(array: np.ndarray) -> Image.Image:
    """The reference's expand2square, built independently: a canvas of int(255*mean) with the image centred."""
    h, w, _ = array.shape
    side = max(h, w)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = [123, 116, 103]  # int(255 * (0.485, 0.456, 0.406)), by hand
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = array
    return Image.fromarray(canvas)


@pytest.fixture
def pad_samples(tok, tiny_cfg, media_dir):
    wide, tall = photo(640, 480, seed=3), photo(200, 500, seed=4)
    Image.fromarray(wide).save(media_dir / "wide.png")
    Image.fromarray(tall).save(media_dir / "tall.png")
    raws = [{"id": "one", "set": "s", "image": "wide.png", "conversations": conv(("<image>\nq", "a"))},
            {"id": "two", "set": ["np", "np"], "image": ["wide.png", "tall.png"],
             "conversations": conv(("<image><image>\nq", "a"))}]
    reg = write_registry(media_dir, raws)
    reg.image_folders["np"] = str(media_dir)
    reg.no_patch_sets.append("np")
    media = MediaSpec.from_config(tiny_cfg, tile_size=448, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

    def run(pipeline, aspect="pad"):
        proc = SampleProcessor(tok, media, reg, 100_000, system_prompt="S", image_aspect_ratio=aspect,
                               image_pipeline=pipeline)
        return [proc(parse_sample(r, file=str(media_dir / "chat.json"), index=i), str(media_dir / "chat.json"))
                for i, r in enumerate(raws)]
    return run, wide, tall


def test_pad_pastes_on_the_mean_colour_then_tiles_or_crops(pad_samples):
    run, wide, tall = pad_samples
    one, two = run("host")
    # a single image is tiled whatever its set; padded 640x640 is a square big enough for 2x2 + thumbnail
    tiles = one["pixel_values"]
    assert tiles.shape[0] == 5
    assert (tiles[4] - clip(_padded(wide))[0]).abs().max() < 1e-5  # the thumbnail: the whole padded square
    background = (torch.tensor([123, 116, 103]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    # 80 of 640 rows are padding above the image: 112 of 896 after the grid resize; the first 100 are pure colour
    assert (tiles[0, :, :100] - background.view(3, 1, 1)).abs().max() < 1e-5
    # each image of the multi-image sample in a no_patch set: padded, then the CLIP processing (a square: resize)
    expected = torch.cat([clip(_padded(wide)), clip(_padded(tall))])
    assert (two["pixel_values"] - expected).abs().max() < 1e-5
    # without pad the same sample is centre-cropped, not padded
    plain = run("host", "dynamic")[1]["pixel_values"]
    assert (plain - torch.cat([clip(Image.fromarray(wide)), clip(Image.fromarray(tall))])).abs().max() < 1e-5


def test_pad_on_the_device_path_stays_within_the_bound(pad_samples):
    run, _, _ = pad_samples
    for host, device in zip(run("host"), run("device")):
        assert torch.equal(host["input_ids"], device["input_ids"])
        batch = stack_images(device["images"], device["image_grids"])
        tiles = tiles_from_images(batch["images"], batch["image_sizes"], batch["image_grids"], 448,
                                  IMAGENET_MEAN, IMAGENET_STD)
        diff = (tiles - host["pixel_values"]).abs()
        # the canvas edge is a hard step, where the two bicubic filters ring differently: 0.0525 measured
        assert diff.max() <= 0.1 and diff.mean() <= 0.01


def test_a_single_image_in_a_no_patch_set_is_still_tiled(pad_samples):
    run, _, _ = pad_samples
    one = run("host", "dynamic")[0]
    assert one["pixel_values"].shape[0] == 13  # 640x480: 4x3 grid + thumbnail, as the reference


def test_video_frames_are_centre_cropped_like_untiled_images(tok, tiny_cfg, media_dir):
    from tests.test_datasets_as_shipped import all_frames, write_mp4
    from vita_trainer.data.registry import Registry
    write_mp4(media_dir / "clip.mp4", frames=20, fps=10)  # 64x48: stride 3 gives 7 frames
    raw = {"id": "v", "video": "clip.mp4", "conversations": conv(("<video>\nWhat happens?", "Light."))}
    (media_dir / "v.json").write_text(__import__("json").dumps([raw]))
    reg = Registry(base_dir=str(media_dir), datasets={"d": {"chat_path": "v.json", "video_root": "."}})
    media = MediaSpec.from_config(tiny_cfg, tile_size=448, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    out = SampleProcessor(tok, media, reg, 100_000, system_prompt="S")(
        parse_sample(raw, file=str(media_dir / "v.json"), index=0), str(media_dir / "v.json"))
    every = all_frames(media_dir / "clip.mp4")
    expected = torch.cat([clip(Image.fromarray(every[i])) for i in (0, 3, 6, 9, 12, 15, 18)])
    assert (out["pixel_values"] - expected).abs().max() < 1e-5


def test_host_tiles_against_a_hand_computed_tiling():
    """A 12x4 image with 4 px tiles: InternVL's grid for aspect 3 is 3 columns x 1 row at exactly the image's size,
    so the tiles are the image's three 4x4 blocks, pixel for pixel, plus a thumbnail; each value v of channel c is
    (v / 255 - mean[c]) / std[c] with ImageNet's mean and std, computed here by hand."""
    import numpy as np
    from PIL import Image

    from vita_trainer.data.image import tile_image, tiles_to_tensor
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.zeros((4, 12, 3), dtype=np.uint8)
    for y in range(4):
        for x in range(12):
            pixels[y, x] = (20 * x + y, 200 - 10 * x, 7 * y + x)
    tiles = tile_image(Image.fromarray(pixels), tile_size=4)
    assert len(tiles) == 4  # 3 x 1 grid + thumbnail
    tensor = tiles_to_tensor(tiles, mean, std)
    assert tuple(tensor.shape) == (4, 3, 4, 4)
    for tile in range(3):
        for y in range(4):
            for x in range(4):
                value = pixels[y, 4 * tile + x]
                for c in range(3):
                    expected = (int(value[c]) / 255 - mean[c]) / std[c]
                    assert abs(float(tensor[tile, c, y, x]) - expected) < 1e-5, (tile, c, y, x)
    flat = tiles_to_tensor(tile_image(Image.new("RGB", (12, 4), (30, 120, 250)), tile_size=4), mean, std)
    for c, v in enumerate((30, 120, 250)):  # a flat image: every tile and the thumbnail keep its colour
        assert torch.allclose(flat[:, c], torch.full_like(flat[:, c], (v / 255 - mean[c]) / std[c]), atol=1e-5)
