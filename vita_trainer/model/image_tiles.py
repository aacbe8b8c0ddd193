"""The device half of the image pipeline: decoded uint8 images in, normalised tiles out, on the model's device.

The same layout as `data.image.tile_image` (grid resize cut into tiles, then a thumbnail of the whole image; an
untiled image resized on its short side and centre-cropped, the same geometry), with
torch's antialiased bicubic in place of Pillow's. Against the host PIL path the pixels differ by rounding and the
filters' edge handling: tests/test_image_pipeline.py states the bound. The host path stays for exact reference
pixels (`--image_pipeline host`).
"""

from __future__ import annotations

import torch
from torch.nn.functional import interpolate

from ..data.geometry import centre_crop_box, short_side_size


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Pillow clamps each resized pixel to 0..255; bicubic overshoots at edges otherwise.
    return interpolate(image, size=(height, width), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)


def tiles_from_images(images: torch.Tensor, sizes, grids, tile_size: int, mean, std) -> torch.Tensor:
    """images (N, Hmax, Wmax, 3) uint8, each padded at the bottom/right; sizes (N, 2) as (height, width);
    grids (N, 4) as (cols, rows, thumbnail, centre crop), as lists (or tensors). Returns (tiles, 3, tile_size,
    tile_size) float32, image by image in order, each image's grid tiles row-major and then its thumbnail."""
    out = []
    sizes, grids = (x.tolist() if torch.is_tensor(x) else x for x in (sizes, grids))
    for image, (height, width), (cols, rows, thumb, crop) in zip(images, sizes, grids):
        x = image[:height, :width].permute(2, 0, 1).unsqueeze(0).float()
        if crop:
            new_width, new_height = short_side_size(width, height, tile_size)
            left, top, right, bottom = centre_crop_box(new_width, new_height, tile_size)
            out.append(_resize(x, new_height, new_width)[:, :, top:bottom, left:right])
            continue
        grid = _resize(x, rows * tile_size, cols * tile_size)
        # (1, 3, rows*t, cols*t) -> (rows*cols, 3, t, t), row-major like the host path's crops
        grid = grid.reshape(3, rows, tile_size, cols, tile_size).permute(1, 3, 0, 2, 4)
        out.append(grid.reshape(rows * cols, 3, tile_size, tile_size))
        if thumb:
            out.append(_resize(x, tile_size, tile_size))
    tiles = torch.cat(out)
    scale = torch.tensor(std, dtype=tiles.dtype, device=tiles.device).view(1, 3, 1, 1) * 255.0
    shift = torch.tensor(mean, dtype=tiles.dtype, device=tiles.device).view(1, 3, 1, 1) * 255.0
    return tiles.sub_(shift).div_(scale)
