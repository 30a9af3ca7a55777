"""The corruptions of Hendrycks & Dietterich (ICLR 2019), generated in torch on the images' device, batched and
seeded: `corrupt(images, name, severity, generator)`.

The parameters are data (trainers/corruption_params.py): CIFAR-10-C's for 32 px, Tiny-ImageNet-C's for 64 px,
MNIST-C's for 28 px and basin's scaled set for 8 px digits. Each function follows the reference generator's steps
(facts taken from hendrycks/robustness and google-research/mnist-c; the code is basin's own) on a whole batch
at once, with every random draw from the given torch.Generator, so the same seed gives the same images.
Where the reference calls a C library (ImageMagick's motion blur, libjpeg, PIL's box resize) this module
implements the same operation in torch; docs/corruptions.md lists what comes from where and how close it is.

Images are (N, C, H, W), square, C = 1 or 3, uint8 or float in [0, 1]; the result has the same shape and dtype.
Results are quantised to the uint8 grid by truncation, as the reference's np.uint8 cast does, so a generated
set can stand in for a published one.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_grayscale, rgb_to_hsv
from kornia.filters import filter2d, gaussian_blur2d

from trainers import textures
from trainers.corruption_params import CORRUPTIONS, GENERATOR, TABLES, params

__all__ = ["CORRUPTIONS", "GENERATOR", "corrupt", "generator_for"]

CHUNK = 1024  # images corrupted at once: bounds memory (fixed, since the random stream depends on it)


def generator_for(seed: int, name: str, severity: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one corrupted set: a function of (seed, corruption, severity) only, so every trial of a
    study, every point and every device count sees the same draws."""
    mixed = zlib.crc32(f"{name}:{severity}".encode()) + 1_000_003 * seed
    return torch.Generator(device=device).manual_seed(mixed % (2**63))


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """`images` corrupted by `name` at `severity` (1-5) with the parameters of their size."""
    n, c, h, w = images.shape
    if h != w or h not in TABLES:
        raise ValueError(f"generated corruptions have parameters for square images of {sorted(TABLES)} px, "
                         f"got {h}x{w}")
    if c not in (1, 3):
        raise ValueError(f"generated corruptions need 1 or 3 channels, got {c}")
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r} (known: {', '.join(CORRUPTIONS)})")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity: expected 1-5, got {severity}")
    p, layout = params(h, name, severity), TABLES[h]["layout"]
    out = []
    for i in range(0, n, CHUNK):
        x = images[i:i + CHUNK]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        y = FUNCTIONS[name](x, p, layout, generator)
        y = torch.floor(y.clamp(0, 1) * 255 + 1e-4)  # the reference's np.uint8(...) truncation
        out.append(y.to(torch.uint8) if images.dtype == torch.uint8 else (y / 255).to(images.dtype))
    return torch.cat(out) if out else images.clone()


# -- helpers ----------------------------------------------------------------------------------------------
def _rand(x: torch.Tensor, g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape or x.shape, generator=g, device=x.device)


def _randn(x: torch.Tensor, g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape or x.shape, generator=g, device=x.device)


def _uniform(x: torch.Tensor, g: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * _rand(x, g, *shape)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601, as cv2's RGB2GRAY); a grey image is its own."""
    return x if x.shape[1] == 1 else rgb_to_grayscale(x)


def _sep_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' convolution of (N, 1, H, W) with a 1-D kernel along both axes."""
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _zoom_matrix(side: int, zoom: float, device: torch.device) -> torch.Tensor:
    """(side, side) linear-interpolation matrix of the reference's clipped_zoom along one axis: crop the centre
    ceil(side / zoom) pixels, zoom them with scipy's order-1 zoom (corner pixels aligned), trim to side."""
    crop = math.ceil(side / zoom)
    top = (side - crop) // 2
    out = round(crop * zoom)
    trim = (out - side) // 2
    pos = top + (torch.arange(side, dtype=torch.float64) + trim) * ((crop - 1) / max(out - 1, 1))
    lo = pos.floor().clamp(0, side - 1)
    frac = (pos - lo).float()
    m = torch.zeros(side, side)
    rows = torch.arange(side)
    m[rows, lo.long()] += 1 - frac
    m[rows, (lo.long() + 1).clamp(max=side - 1)] += frac
    return m.to(device)


def _clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    m = _zoom_matrix(x.shape[-1], zoom, x.device)
    return m @ x @ m.T


def _box_matrix(src: int, dst: int) -> torch.Tensor:
    """(dst, src) PIL BOX resampling: output pixel j averages the input pixels whose centres fall in its
    footprint [j, j + 1) * src / dst (for upsampling, the one nearest its centre)."""
    scale = src / dst
    support = max(scale, 1.0) * 0.5
    m = torch.zeros(dst, src)
    for j in range(dst):
        centre = (j + 0.5) * scale
        lo, hi = max(0, int(centre - support + 0.5)), min(src, int(centre + support + 0.5))
        for i in range(lo, hi):
            t = (i - centre + 0.5) / max(scale, 1.0)
            if -0.5 < t <= 0.5:
                m[j, i] = 1.0
        m[j] /= m[j].sum()
    return m


def _resize_area(x: torch.Tensor, side: int) -> torch.Tensor:
    return x if x.shape[-1] == side else F.interpolate(x, size=(side, side), mode="area")


def _motion_kernels(radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """(N, 2r+1, 2r+1) kernels of ImageMagick's MotionBlurImage (as the reference calls it through Wand, and as
    the imagecorruptions package re-implements it): weights exp(-i^2 / 2 sigma^2), i = 0..2r, normalised, at
    offsets round(i * (sin a, cos a)) along the motion (rounding halves down)."""
    width = 2 * radius + 1
    i = torch.arange(width, device=angles.device, dtype=torch.float32)
    w = torch.exp(-i**2 / (2 * sigma**2))
    w = w / w.sum()
    rad = torch.deg2rad(angles)[:, None]
    dy = torch.ceil(i * torch.sin(rad) - 0.5).long()
    dx = torch.ceil(i * torch.cos(rad) - 0.5).long()
    # offsets beyond the kernel's half-width (2r > r) need a kernel of side 4r + 1
    side = 2 * (width - 1) + 1
    k = torch.zeros(len(angles), side * side, device=angles.device)
    flat = (dy + width - 1) * side + (dx + width - 1)
    k.scatter_add_(1, flat, w.expand_as(flat).contiguous())
    return k.view(len(angles), side, side)


def _motion(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """Motion blur with edge pixels repeated beyond the border (ImageMagick's default virtual pixels)."""
    k = _motion_kernels(radius, sigma, angles)
    k = _trim(k)
    return filter2d(x, k, border_type="replicate")


def _trim(k: torch.Tensor) -> torch.Tensor:
    """Crop a batch of odd square kernels to the smallest centred square holding every nonzero weight."""
    side = k.shape[-1]
    c = side // 2
    nz = (k.abs().sum(0) > 0).nonzero()
    r = int((nz - c).abs().max()) if len(nz) else 0
    return k[..., c - r:c + r + 1, c - r:c + r + 1]


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's antialiased disk kernel: a disk on a grid of radius max(8, radius), normalised, then a
    3 x 3 (5 x 5 past radius 8) Gaussian of sigma alias_blur over it (cv2.GaussianBlur)."""
    half = 8 if radius <= 8 else math.ceil(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None] ** 2 + t[:, None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    ks = 3 if radius <= 8 else 5
    g = torch.exp(-(torch.arange(ks, dtype=torch.float64) - ks // 2) ** 2 / (2 * alias_blur**2))
    g /= g.sum()
    p = ks // 2
    d = F.pad(disk[None, None], (p, p, p, p), mode="reflect")
    d = F.conv2d(F.conv2d(d, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return _trim(d[0].float())


def _gauss_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scikit-image's gaussian (edge pixels repeated, radius int(truncate * sigma + 0.5)) through kornia."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x
    return gaussian_blur2d(x, (2 * radius + 1, 2 * radius + 1), (sigma, sigma), border_type="replicate")


# -- the corruptions --------------------------------------------------------------------------------------
Fn = Callable[[torch.Tensor, object, dict, torch.Generator], torch.Tensor]


def gaussian_noise(x, sigma, layout, g):
    return x + sigma * _randn(x, g)


def shot_noise(x, photons, layout, g):
    return torch.poisson(x * photons, generator=g) / photons


def impulse_noise(x, amount, layout, g):
    """Salt and pepper per value (scikit-image's random_noise 's&p'): a share `amount`, half 0 and half 1."""
    hit = _rand(x, g) < amount
    salt = _rand(x, g) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def defocus_blur(x, p, layout, g):
    radius, alias = p
    return filter2d(x, _disk(radius, alias).to(x), border_type="reflect")


def glass_blur(x, p, layout, g):
    """Blur, quantise, then locally shuffle: every pixel (bottom-right to top-left, as the reference loops)
    takes the value of a random neighbour at most `delta` away (offsets in [-delta, delta)); blur again. The
    steps run in the reference's order, each one for the whole batch at once. On colour images the reference's
    swap `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on numpy views and so only copies the neighbour into
    (h, w); that is what CIFAR-10-C and Tiny-ImageNet-C hold, and what basin does (`glass` = "copy"). MNIST-C's
    greyscale arrays hold scalars, so there it swaps (`glass` = "swap")."""
    sigma, delta, passes, prob = p
    swap = layout["glass"] == "swap"
    n, c, h, w = x.shape
    x = torch.floor(_gauss_filter(x, sigma) * 255) / 255
    flat = x.reshape(n, c, h * w).clone()
    positions = [(r, q) for r in range(h - delta, delta, -1) for q in range(w - delta, delta, -1)]
    for _ in range(passes):
        off = torch.randint(-delta, delta, (len(positions), 2, n), generator=g, device=x.device)
        if prob < 1:
            off = off * (_rand(x, g, len(positions), 1, n) < prob)
        for k, (r, q) in enumerate(positions):
            here = r * w + q
            there = ((r + off[k, 1]) * w + (q + off[k, 0]))[:, None, None].expand(n, c, 1)
            a = flat[:, :, here].clone()
            flat[:, :, here] = flat.gather(2, there)[:, :, 0]
            if swap:
                flat.scatter_(2, there, a[:, :, None])
    return _gauss_filter(flat.view(n, c, h, w), sigma)


def motion_blur(x, p, layout, g):
    radius, sigma = p
    return _motion(x, int(radius), sigma, _uniform(x, g, -45, 45, len(x)))


def zoom_blur(x, p, layout, g):
    stop, step = p
    zooms = torch.arange(1, stop, step, dtype=torch.float64).tolist()
    out = x.clone()
    for z in zooms:
        out += _clipped_zoom(x, z)
    return out / (len(zooms) + 1)


def snow(x, p, layout, g):
    """Flakes: Gaussian noise zoomed (flake size), thresholded, motion-blurred at a random angle in
    [-135, -45] degrees, added twice (the second rotated by 180 degrees) to the image, which is first partly
    whitened. Drawn at the table's overlay side and resized to the image (8 px digits)."""
    loc, scale, zoom, threshold, radius, sigma, keep = p
    n, side = len(x), layout["overlay"]
    layer = loc + scale * _randn(x, g, n, 1, side, side)
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255               # the reference saves it as an 8-bit PNG
    layer = _motion(layer, int(radius), sigma, _uniform(x, g, -135, -45, n))
    layer = _resize_area(layer, x.shape[-1])
    x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)


def frost(x, p, layout, g):
    image_weight, frost_weight = p
    side = layout["overlay"]
    crops = textures.frost_crops(len(x), side, x.shape[1], layout["frost_scale"], g, x.device)
    return image_weight * x + frost_weight * _resize_area(crops, x.shape[-1])


def fog(x, p, layout, g):
    amount, decay = p
    side = layout["overlay"]
    haze = textures.plasma(len(x), layout["plasma"], decay, g, x.device)[:, None, :side, :side]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + amount * _resize_area(haze, x.shape[-1])) * peak / (peak + amount)


def brightness(x, delta, layout, g):
    """Raise the HSV value (kornia's conversions); for grey images the value is the intensity."""
    if x.shape[1] == 1:
        return x + delta
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([hsv[:, :2], (hsv[:, 2:] + delta).clamp(0, 1)], 1)
    return hsv_to_rgb(hsv)


def contrast(x, factor, layout, g):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def elastic_transform(x, p, layout, g):
    """A random affine map (three control points jittered by up to `jitter` px, mirrored borders) followed by
    a smooth random displacement (uniform noise smoothed by a Gaussian of `sigma` px, truncated at 3 sigma,
    scaled by `alpha` px): one bilinear resampling of the composed map."""
    alpha, sigma, jitter = p
    n, _, h, w = x.shape
    dev = x.device
    centre, size = torch.tensor([w // 2, h // 2], dtype=torch.float32, device=dev), min(h, w) // 3
    src = torch.stack([centre + size, centre + torch.tensor([size, -size], device=dev), centre - size])
    dst = src + _uniform(x, g, -jitter, jitter, n, 3, 2)
    # the map from output to input points: solve [dst 1] @ A = src
    ones = torch.ones(n, 3, 1, device=dev)
    inv = torch.linalg.solve(torch.cat([dst, ones], 2), src.expand(n, 3, 2))   # (n, 3, 2)
    if alpha > 0 and sigma > 0:
        k = textures.gaussian_kernel(sigma, 3.0).to(dev)
        r = len(k) // 2
        noise = _uniform(x, g, -1, 1, 2 * n, 1, h + 2 * r, w + 2 * r)
        disp = (_sep_conv(noise, k) * alpha).view(n, 2, h, w)
    else:
        disp = torch.zeros(n, 2, h, w, device=dev) + alpha * _uniform(x, g, -1, 1, n, 2, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    px = xs + disp[:, 0]                                        # the reference adds dx to columns, dy to rows
    py = ys + disp[:, 1]
    pts = torch.stack([px, py, torch.ones_like(px)], -1)        # (n, h, w, 3)
    q = pts @ inv[:, None]                                      # (n, h, w, 2): input points, in pixels
    grid = torch.stack([2 * q[..., 0] / (w - 1) - 1, 2 * q[..., 1] / (h - 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def pixelate(x, fraction, layout, g):
    side = x.shape[-1]
    small = int(side * fraction)
    down = _box_matrix(side, small).to(x)
    up = _box_matrix(small, side).to(x)
    return up @ (down @ x @ down.T) @ up.T


def jpeg_compression(x, quality, layout, g):
    return jpeg(x, int(quality))


FUNCTIONS: dict[str, Fn] = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression)}
assert tuple(FUNCTIONS) == CORRUPTIONS


# -- JPEG -------------------------------------------------------------------------------------------------
# Baseline JPEG as libjpeg (PIL) writes and reads it: the standard (Annex K) quantisation tables scaled by the
# IJG quality formula, 8x8 DCT, exact rounding, YCbCr with 4:2:0 chroma (PIL's default) and the decoder's
# "fancy" (triangle) chroma upsampling. kornia's jpeg_codec_differentiable rounds with a cubic (differentiable)
# approximation and differs from PIL about three times as much on 32 px images (docs/corruptions.md).
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def _qtable(base: list[int], quality: int, device: torch.device) -> torch.Tensor:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    t = torch.tensor(base, dtype=torch.float32, device=device).view(8, 8)
    return ((t * scale + 50) // 100).clamp(1, 255)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] = math.sqrt(1 / 8)
    return m


def _code(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """DCT, quantise, dequantise, inverse DCT of each 8x8 block of (N, H, W) samples (level-shifted by 128);
    edges are padded by repetition to whole blocks (as libjpeg does) and cropped back."""
    n, h, w = plane.shape
    ph, pw = -h % 8, -w % 8
    p = F.pad(plane[:, None], (0, pw, 0, ph), mode="replicate")[:, 0] if ph or pw else plane
    H, W = p.shape[1:]
    d = _dct_matrix(plane.device)
    blocks = p.reshape(n, H // 8, 8, W // 8, 8).transpose(2, 3)
    coef = torch.round(d @ blocks @ d.T / table) * table
    return (d.T @ coef @ d).transpose(2, 3).reshape(n, H, W)[:, :h, :w]


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """x (N, C, H, W) in [0, 1], C = 1 (greyscale JPEG) or 3, through a JPEG encode and decode."""
    x = torch.round(x.clamp(0, 1) * 255)
    luma, chroma = _qtable(_LUMA, quality, x.device), _qtable(_CHROMA, quality, x.device)
    if x.shape[1] == 1:
        return (torch.round(_code(x[:, 0] - 128, luma) + 128).clamp(0, 255) / 255)[:, None]
    r, gr, b = x.unbind(1)
    y = 0.299 * r + 0.587 * gr + 0.114 * b
    cb = -0.168736 * r - 0.331264 * gr + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * gr - 0.081312 * b + 128
    y = _code(y - 128, luma) + 128
    planes = []
    for ch in (cb, cr):
        small = F.avg_pool2d(ch[:, None], 2, ceil_mode=True)[:, 0]
        small = _code(small - 128, chroma) + 128
        planes.append(F.interpolate(small[:, None], scale_factor=2, mode="bilinear",
                                    align_corners=False)[:, 0, :x.shape[2], :x.shape[3]])
    cb, cr = planes
    rgb = torch.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                       y + 1.772 * (cb - 128)], 1)
    return torch.round(rgb).clamp(0, 255) / 255
