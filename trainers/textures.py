"""Procedural textures for the weather corruptions: plasma fractals (fog) and frost, in torch, batched.

Hendrycks & Dietterich's frost overlays crops of six photographs of frosted glass. basin ships no photographs:
`frost_bank` draws stand-ins from a fixed seed, so every run sees the same five "photos" (as the reference
reads the same files) and only the crop positions depend on the corruption's seed. A frost texture is a
plasma-fractal haze plus ice needles: straight crystals at random angles and lengths, each with shorter side
branches at +-60 degrees (the dendrites of real frost), growing in clumps where the haze is bright, splatted
as three-pixel-wide lines, softened by a Gaussian (sigma 2 px), and tinted pale blue for colour images. It is
drawn at 1,024 "photo pixels" (about the size of the reference's photos) and shrunk by the table's
`frost_scale`, as the reference resizes its photos (0.2 for CIFAR, 0.3 for Tiny ImageNet, unscaled for
MNIST-C).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

FROST_SEED = 20190325     # the five stand-in photos are always the same
FROST_PHOTOS = 5          # the reference draws from its first five photographs
FROST_SIDE = 1024         # side of a stand-in photo in photo pixels, before `frost_scale`
FROST_TINT = (0.80, 0.90, 1.00)


def plasma(n: int, size: int, decay: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, size, size) diamond-square fractals in [0, 1], as Hendrycks's `plasma_fractal`: each level fills the
    new points with the mean of their neighbours plus uniform noise of amplitude wibble^2, wibble starting at 100
    and divided by `decay` per level (larger decay = smoother). `size` must be a power of two. kornia's
    diamond_square is a different variant (a mixing weight per level, not this amplitude), so it is not used."""
    assert size & (size - 1) == 0, "plasma size must be a power of two"
    a = torch.zeros(n, size, size, device=device)
    step, wibble = size, 100.0

    def noisy(mean_of_four: torch.Tensor) -> torch.Tensor:
        u = torch.rand(mean_of_four.shape, generator=g, device=device) * 2 - 1
        return mean_of_four / 4 + wibble * wibble * u

    while step >= 2:
        half = step // 2
        corners = a[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        squares = squares + squares.roll(-1, 2)
        a[:, half::step, half::step] = noisy(squares)
        centres, corners = a[:, half::step, half::step], a[:, ::step, ::step]
        a[:, ::step, half::step] = noisy(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        a[:, half::step, ::step] = noisy(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    a = a - a.amin(dim=(1, 2), keepdim=True)
    return a / a.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def _needles(side: int, g: torch.Generator, count: int, density: torch.Tensor) -> torch.Tensor:
    """Ice needles with side branches, splatted as points (three pixels wide) onto a (side, side) map in photo
    pixels; needles start where `density` (a map in [0, 1]) is high, so crystals grow in clumps."""
    img = torch.zeros(side * side)
    cells = torch.multinomial(density.flatten() ** 3 + 1e-6, count, replacement=True, generator=g)
    starts = torch.stack([cells % side, cells // side], 1).float() + torch.rand(count, 2, generator=g)
    angles = torch.rand(count, generator=g) * 2 * math.pi
    lengths = 15 + 110 * torch.rand(count, generator=g) ** 2      # mostly short, a few long crystals
    strength = 0.35 + 0.65 * torch.rand(count, generator=g)
    segs = [(starts, angles, lengths, strength)]
    # side branches: at regular places along each needle, alternating +-60 degrees, a third of its length
    for frac, sign in ((0.25, 1), (0.45, -1), (0.65, 1), (0.85, -1)):
        along = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * (lengths * frac)[:, None]
        segs.append((starts + along, angles + sign * math.pi / 3, lengths * (1 - frac) * 0.4, strength * 0.8))
    for origin, angle, length, s in segs:
        steps = torch.arange(0, 140, 0.5)                                   # two points per pixel
        keep = steps[None, :] <= length[:, None]
        xy = origin[:, None, :] + steps[None, :, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)[:, None]
        xy, w = xy[keep], s[:, None].expand_as(keep)[keep]
        across = torch.stack([-torch.sin(angle), torch.cos(angle)], 1)[:, None].expand(-1, keep.shape[1], -1)[keep]
        xy = torch.cat([xy + k * across for k in (-1, 0, 1)])
        w = w.repeat(3)
        inside = (xy >= 0).all(1) & (xy < side).all(1)
        xy, w = xy[inside].long(), w[inside]
        img.index_add_(0, xy[:, 1] * side + xy[:, 0], w)
    return img.view(side, side)


@functools.lru_cache(maxsize=8)
def _bank_cpu(side: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(FROST_SEED)
    photos = []
    for _ in range(FROST_PHOTOS):
        haze = plasma(1, FROST_SIDE, 2.0, g, torch.device("cpu"))[0]
        ice = _needles(FROST_SIDE, g, 1500, haze).clamp(max=2.0)
        ice = _blur(ice[None, None], 2.0)[0, 0]
        photos.append((0.1 + 0.4 * haze**2 + 0.9 * ice).clamp(0, 1))
    x = torch.stack(photos)[:, None]                                      # (5, 1, 1024, 1024)
    if side != FROST_SIDE:                                                # the reference's cv2.resize(fx=scale)
        x = F.interpolate(x, size=(side, side), mode="area" if side < FROST_SIDE else "bilinear")
    return x[:, 0]


def frost_bank(scale: float, device: torch.device) -> torch.Tensor:
    """(5, side, side) grey frost textures in [0, 1], side = 1024 * scale (the stand-in photos, resized)."""
    side = max(64, round(FROST_SIDE * scale))
    return _bank_cpu(side, float(scale)).to(device)


def frost_crops(n: int, size: int, channels: int, scale: float, g: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """(n, channels, size, size) random crops of random stand-in photos (as the reference crops its photos);
    colour crops are tinted pale blue."""
    bank = frost_bank(scale, device)
    side = bank.shape[-1]
    which = torch.randint(0, FROST_PHOTOS, (n,), generator=g, device=device)
    top = torch.randint(0, side - size, (n,), generator=g, device=device)
    left = torch.randint(0, side - size, (n,), generator=g, device=device)
    ar = torch.arange(size, device=device)
    rows = (top[:, None] + ar)[:, :, None]
    cols = (left[:, None] + ar)[:, None, :]
    crops = bank[which[:, None, None], rows, cols][:, None]                # (n, 1, size, size)
    if channels == 1:
        return crops
    tint = torch.tensor(FROST_TINT, device=device).view(1, 3, 1, 1)
    return crops * tint


def gaussian_kernel(sigma: float, truncate: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius int(truncate * sigma + 0.5), as scipy / scikit-image build it."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = gaussian_kernel(sigma, 3.0).to(x)
    r = len(k) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
