"""The CLIP image processor's geometry for an untiled image, as numbers only (no Pillow, no torch): the host path
(data/image.py) and the device path (model/image_tiles.py, which runs where Pillow may be missing) share it."""

from __future__ import annotations


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to `size`, the long side truncated to an int (the rule of
    transformers' `get_resize_output_image_size` with `default_to_square=False`)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def centre_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred size×size crop (offsets rounded down, as transformers'
    `center_crop`)."""
    left, top = (width - size) // 2, (height - size) // 2
    return left, top, left + size, top + size
