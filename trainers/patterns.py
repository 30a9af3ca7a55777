"""Binary pictures for the loss-patterns method (`method: mpo`): which cells of a weight-space plane must
have low loss (black) and which high loss (white).

A pattern is a bundled icon (drawn for basin, below), a PNG or PBM/PGM file (thresholded: opaque or dark
pixels are black), or a random mask with its own seed. Torch-free (NumPy, and Pillow for files), so configs
check their pattern before a trial or a sweep starts.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# Icons drawn for basin ('#' black = low loss, '.' white = high loss). Small on purpose: every cell of the
# plane is a network, and digits trials must stay quick on a laptop.
ICONS: dict[str, str] = {
    "heart": """
        .........
        ..#...#..
        .###.###.
        .#######.
        .#######.
        ..#####..
        ...###...
        ....#....
        .........
    """,
    "cross": """
        ..........
        ....##....
        ....##....
        ....##....
        .########.
        .########.
        ....##....
        ....##....
        ....##....
        ..........
    """,
    "ring": """
        ............
        ....####....
        ..########..
        ..###..###..
        .###....###.
        .##......##.
        .##......##.
        .###....###.
        ..###..###..
        ..########..
        ....####....
        ............
    """,
    "smiley": """
        ..............
        ....######....
        ..##########..
        .###......###.
        .##........##.
        ##..##..##..##
        ##..##..##..##
        ##..........##
        ##.##....##.##
        ##..######..##
        .##..####..##.
        .###......###.
        ..##########..
        ....######....
    """,
}
RANDOM = "random"
FORMATS = ("PNG", "PPM")  # Pillow names PBM/PGM/PPM files "PPM"
MAX_SIDE = 128            # cells per side: every cell is a network evaluated for the heat maps


class PatternError(ValueError):
    """A pattern that cannot be used; the message is one line saying why."""


def icon(name: str) -> np.ndarray:
    rows = [r.strip() for r in ICONS[name].strip().splitlines()]
    return np.array([[ch == "#" for ch in r] for r in rows], dtype=bool)


def absolute(pattern: str) -> str:
    """A picture file given by a relative path, as an absolute one: trials may run in another folder (Ray
    Tune runs each in its own). Icons, random masks, ~ paths and missing files stay as they are."""
    p = Path(pattern)
    if pattern in ICONS or pattern == RANDOM or p.is_absolute() or pattern.startswith("~") or not p.is_file():
        return pattern
    return str(p.resolve())


def read_picture(path: str) -> np.ndarray:
    """A PNG or PBM/PGM/PPM file as a boolean array, True = black: opaque pixels where the picture has
    transparency (icons are drawn on a transparent background), else pixels darker than mid-grey."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise PatternError(f"{path}: no such file (expected an icon: {', '.join(ICONS)}; {RANDOM!r}; or a PNG/PBM "
                           f"file)")
    if p.stat().st_size == 0:
        raise PatternError(f"{path}: empty file")
    try:
        with Image.open(p) as im:
            if im.format not in FORMATS:
                raise PatternError(f"{path}: a {im.format} image; expected PNG or PBM/PGM")
            im.load()
            if im.width == 0 or im.height == 0:
                raise PatternError(f"{path}: empty image")
            if "A" in im.getbands() or "transparency" in im.info:
                alpha = np.asarray(im.convert("RGBA"))[..., 3]
                if alpha.min() < 128:
                    return alpha >= 128
            return np.asarray(im.convert("L")) < 128
    except UnidentifiedImageError:
        raise PatternError(f"{path}: not a PNG or PBM/PGM image") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or malformed files
        if isinstance(e, PatternError):
            raise
        raise PatternError(f"{path}: unreadable image ({' '.join(str(e).split())[:120]})") from None


def resize(black: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side has `size` cells (area average, then threshold at half)."""
    from PIL import Image

    h, w = black.shape
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(np.where(black, 255, 0).astype(np.uint8)).resize(shape, Image.Resampling.BOX)
    return np.asarray(img) >= 128


def random_mask(size: int, fill: float, seed: int) -> np.ndarray:
    """size x size cells, each black with probability `fill`, from its own seed."""
    return np.random.default_rng(seed).random((size, size)) < fill


@functools.lru_cache(maxsize=256)
def load(pattern: str, size: int = 0, fill: float = 0.5, seed: int = 0) -> np.ndarray:
    """The pattern as a (rows, cols) boolean array, True = black (trained to low loss). Raises PatternError.
    Cached: a sweep checks the same pattern for many trials (a changed file needs a new process)."""
    if pattern == RANDOM:
        if size < 2:
            raise PatternError(f"{RANDOM}: needs mpo_size >= 2 (the side of the mask), got {size}")
        black = random_mask(size, fill, seed)
    else:
        black = icon(pattern) if pattern in ICONS else read_picture(pattern)
        if size:
            black = resize(black, size)
    if max(black.shape) > MAX_SIDE:
        raise PatternError(f"{pattern}: {black.shape[0]} x {black.shape[1]} cells; at most {MAX_SIDE} per side "
                           f"(set mpo_size to resize it)")
    if black.all() or not black.any():
        colour = "black" if black.all() else "white"
        raise PatternError(f"{pattern}: every cell is {colour}; a pattern needs black cells (low loss) and "
                           f"white cells (high loss)")
    black.setflags(write=False)
    return black


def problem(pattern: str, size: int, fill: float, seed: int) -> str:
    """Why the pattern cannot be used ("" when it can): for config checks."""
    try:
        load(pattern, size, fill, seed)
    except PatternError as e:
        return str(e)
    return ""


def trained(black: np.ndarray) -> np.ndarray:
    """Cells that training visits: those with a neighbour (of 8, inside the picture) of the other colour.
    Interior cells are skipped: the plane interpolates between neighbours without being trained there."""
    h, w = black.shape
    pad = np.pad(black, 1, mode="edge")  # edge padding: outside neighbours never differ
    differs = np.zeros_like(black)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            differs |= pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] != black
    return differs


def cell_xy(shape: tuple[int, int], margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Plane coordinates (x, y) of every cell of a (rows, cols) picture grown by `margin` cells on each side,
    as (rows + 2m, cols + 2m) integer arrays: x grows to the right, y upwards, and the centre cell
    (rows // 2, cols // 2) of the picture is (0, 0), the plane's origin."""
    h, w = shape
    xs = np.arange(-margin, w + margin) - w // 2
    ys = h // 2 - np.arange(-margin, h + margin)
    x, y = np.meshgrid(xs, ys)
    return x, y
