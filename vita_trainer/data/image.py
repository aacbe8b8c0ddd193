"""InternVL-style dynamic image tiling: on the host with PIL (the reference's exact pixels), or decode-only on the
host with the resize, crop and normalisation left to the model's device (model/image_tiles.py).

An image that is not tiled (one of a multi-image sample whose set is in `no_patch_sets`, `square` under chatml) and
every video frame goes through what the reference's CLIP image processor does to it: bicubic resize of the short
side to the tile size, then a centre crop (`short_side_size`, `centre_crop_box`). `pad` first pastes the image
centred on a square of the processor mean's colour (`pad_to_square`), as the reference's `expand2square`."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vita_api.constants import IMAGENET_MEAN, IMAGENET_STD  # InternViT's; SigLIP's are 0.5/0.5 (per model config)
from .geometry import centre_crop_box, choose_grid, short_side_size, tile_count  # noqa: F401 (re-exported)


def clip_resize_crop(image: Image.Image, size: int) -> Image.Image:
    """An untiled image as the CLIP image processor sees it: short side to `size` (bicubic), centre crop."""
    resized = image.resize(short_side_size(image.width, image.height, size), Image.BICUBIC)
    return resized.crop(centre_crop_box(resized.width, resized.height, size))


def pad_colour(mean) -> tuple[int, int, int]:
    """The reference's background for `pad`: `int(255 * m)` per channel of the processor's mean."""
    return tuple(int(255 * m) for m in mean)  # type: ignore[return-value]


def pad_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """The image pasted centred on a square canvas of `colour` (offsets rounded down); square images unchanged."""
    image = image.convert("RGB")
    side = max(image.width, image.height)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def tile_image(image: Image.Image, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
               dynamic: bool = True) -> list[Image.Image]:
    """Cut an image into tiles (plus a thumbnail when there is more than one tile); untiled: one CLIP crop."""
    image = image.convert("RGB")
    if not dynamic:
        return [clip_resize_crop(image, tile_size)]
    cols, rows = choose_grid(image.width, image.height, tile_size, max_tiles)
    resized = image.resize((cols * tile_size, rows * tile_size), Image.BICUBIC)
    tiles = [resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.BICUBIC))
    return tiles


def tiles_to_tensor(tiles: list[Image.Image], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(N, 3, H, W) float tensor, normalised. Stacks uint8 and normalises in place (a 13-tile image is ~31 MB
    of floats; float numpy round trips were most of the data path's time)."""
    x = torch.from_numpy(np.stack([np.asarray(t, dtype=np.uint8) for t in tiles])).permute(0, 3, 1, 2).float()
    scale = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return x.sub_(shift).div_(scale).contiguous()


def tile_grid(width: int, height: int, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
              dynamic: bool = True) -> tuple[int, int, int, int]:
    """(cols, rows, thumbnail 0/1, centre crop 0/1): the layout `tile_image` cuts, as numbers the device step
    follows. An untiled image is (1, 1, 0, 1): short side resized, then the centre crop."""
    if not dynamic:
        return 1, 1, 0, 1
    cols, rows = choose_grid(width, height, tile_size, max_tiles)
    return cols, rows, int(use_thumbnail and cols * rows > 1), 0


def decode_for_device(image: Image.Image, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
                      dynamic: bool = True, pad: tuple[int, int, int] | None = None
                      ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The decoded image as an (H, W, 3) uint8 tensor (as decoded: a channels-last copy is a plain memcpy for the
    collator, and the device permutes for free) and its tile grid; nothing else happens on the host but `pad`
    (the colour to pad to a square with, as the host path).

    `image` is opened but not yet loaded: a JPEG larger than twice what the tiles need is decoded at a reduced DCT
    scale (Pillow's draft mode), never below the grid's size, which saves most of its decode time."""
    side = max(image.width, image.height)
    width, height = (side, side) if pad else (image.width, image.height)
    grid = tile_grid(width, height, tile_size, max_tiles, use_thumbnail, dynamic)
    if image.format == "JPEG":
        need = short_side_size(width, height, tile_size) if grid[3] else (grid[0] * tile_size, grid[1] * tile_size)
        image.draft("RGB", need if not pad else (min(need), min(need)))
    rgb = pad_to_square(image, pad) if pad else image.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)), grid
