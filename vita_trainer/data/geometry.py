"""Image geometry as numbers only (no Pillow, no torch): InternVL's tile grids and the CLIP image processor's resize
and crop for an untiled image. The host path (data/image.py) and the device path (model/image_tiles.py, which runs
where Pillow may be missing) share it, and so do the benchmarks' length models."""

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
