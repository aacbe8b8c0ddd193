"""InternVL-style dynamic image tiling: on the host with PIL (the reference's exact pixels), or decode-only on the
host with the resize, crop and normalisation left to the model's device (model/image_tiles.py)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# ImageNet statistics used by InternViT; SigLIP uses 0.5/0.5 (set per vision tower in the model config).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def candidate_grids(min_tiles: int = 1, max_tiles: int = 12) -> list[tuple[int, int]]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, smallest area first."""
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1)
             for i in range(1, n + 1) for j in range(1, n + 1) if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, tile_size: int, max_tiles: int = 12) -> tuple[int, int]:
    """The grid nearest the image's aspect ratio; among equals, a larger one if the image is big enough."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for cols, rows in candidate_grids(1, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_count(width: int, height: int, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
               dynamic: bool = True) -> int:
    """How many tiles `tile_image` makes, from the size alone (no decoding)."""
    if not dynamic:
        return 1
    cols, rows = choose_grid(width, height, tile_size, max_tiles)
    return cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)


def tile_image(image: Image.Image, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
               dynamic: bool = True) -> list[Image.Image]:
    """Cut an image into tiles (plus a thumbnail when there is more than one tile)."""
    image = image.convert("RGB")
    if not dynamic:
        return [image.resize((tile_size, tile_size), Image.BICUBIC)]
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
              dynamic: bool = True) -> tuple[int, int, int]:
    """(cols, rows, thumbnail 0/1): the layout `tile_image` cuts, as three numbers the device step follows."""
    if not dynamic:
        return 1, 1, 0
    cols, rows = choose_grid(width, height, tile_size, max_tiles)
    return cols, rows, int(use_thumbnail and cols * rows > 1)


def decode_for_device(image: Image.Image, tile_size: int, max_tiles: int = 12, use_thumbnail: bool = True,
                      dynamic: bool = True) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The decoded image as an (H, W, 3) uint8 tensor (as decoded: a channels-last copy is a plain memcpy for the
    collator, and the device permutes for free) and its tile grid; nothing else happens on the host.

    `image` is opened but not yet loaded: a JPEG larger than twice what the tiles need is decoded at a reduced DCT
    scale (Pillow's draft mode), never below the grid's size, which saves most of its decode time."""
    grid = tile_grid(image.width, image.height, tile_size, max_tiles, use_thumbnail, dynamic)
    if image.format == "JPEG":
        image.draft("RGB", (grid[0] * tile_size, grid[1] * tile_size))
    rgb = image.convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)), grid
