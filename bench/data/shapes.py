"""Vectorised drawing of small synthetic images (numpy, float RGB in [0, 1], NHWC).

Shared by the demo tasks (``demo_tasks``) and the demo backbone's upstream task
(``bench.commands.pretrain_demo``), so both draw objects, colours and noise the same way.
"""
from __future__ import annotations

import numpy as np

SIZE = 32

# Each shape is a predicate on object-frame coordinates (u, v), the object spanning about [-1, 1].
SHAPES = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(abs(u), abs(v)) <= 0.85,
    "triangle": lambda u, v: (v <= 0.75) & (v >= 1.75 * abs(u) - 1.0),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    "cross": lambda u, v: ((abs(u) <= 0.3) | (abs(v) <= 0.3)) & (np.maximum(abs(u), abs(v)) <= 1.0),
    "bar": lambda u, v: (abs(u) <= 1.0) & (abs(v) <= 0.35),
    "ellipse": lambda u, v: u * u + 4.0 * v * v <= 1.0,
    "half_disc": lambda u, v: (u * u + v * v <= 1.0) & (v >= 0.0),
    "frame": lambda u, v: (np.maximum(abs(u), abs(v)) <= 0.9) & (np.maximum(abs(u), abs(v)) >= 0.55),
    "diamond": lambda u, v: abs(u) + abs(v) <= 1.0,
    "ell": lambda u, v: (abs(u) <= 0.9) & (abs(v) <= 0.9) & ((u <= -0.3) | (v >= 0.3)),
    "star": lambda u, v: (u * u + v * v) <= (0.45 + 0.55 * np.cos(5 * np.arctan2(v, u)) ** 2),
}
SHAPE_NAMES = tuple(SHAPES)


def pixel_grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of pixel centres, each (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


def object_frame(cy, cx, scale, angle, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's coordinates in each object's frame: (N, size, size) arrays u, v, unit = scale."""
    yy, xx = pixel_grid(size)
    dy = yy[None] - np.asarray(cy, np.float32)[:, None, None]
    dx = xx[None] - np.asarray(cx, np.float32)[:, None, None]
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    scale = np.asarray(scale, np.float32)[:, None, None]
    return (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale


def shape_masks(kinds: np.ndarray, cy, cx, scale, angle, size: int = SIZE) -> np.ndarray:
    """Boolean masks (N, size, size) of shape ``SHAPE_NAMES[kinds[i]]`` at the given pose."""
    u, v = object_frame(cy, cx, scale, angle, size)
    out = np.zeros(u.shape, bool)
    for k, predicate in enumerate(SHAPES.values()):
        sel = kinds == k
        if sel.any():
            out[sel] = predicate(u[sel], v[sel])
    return out


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Fill ``mask`` (N, H, W; bool or alpha in [0, 1]) of ``canvas`` (N, H, W, 3) with per-image colours (N, 3)."""
    alpha = mask.astype(np.float32)[..., None]
    canvas *= 1.0 - alpha
    canvas += alpha * colour[:, None, None, :]


def hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns (N, 3)."""
    h, s, v = (np.asarray(a, np.float32) for a in (h, s, v))
    k = (np.array([5.0, 3.0, 1.0], np.float32)[None, :] + 6.0 * h[:, None]) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def random_colours(rng: np.random.Generator, n: int, sat=(0.4, 1.0), val=(0.4, 1.0)) -> np.ndarray:
    """``n`` random RGB colours (N, 3) of any hue with saturation and value in the given ranges."""
    return hsv_to_rgb(rng.random(n), rng.uniform(*sat, n), rng.uniform(*val, n))


def smooth_noise(rng: np.random.Generator, n: int, slope: float | np.ndarray, size: int = SIZE) -> np.ndarray:
    """Gaussian random fields (N, size, size) with power spectrum ~ 1/f**slope, zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    slope = np.broadcast_to(np.asarray(slope, np.float32), (n,))
    amplitude = f[None] ** (-slope[:, None, None] / 2.0)
    amplitude[:, 0, 0] = 0.0
    spectrum = (rng.standard_normal((n,) + f.shape) + 1j * rng.standard_normal((n,) + f.shape)) * amplitude
    field = np.fft.irfft2(spectrum, s=(size, size), axes=(1, 2)).astype(np.float32)
    field -= field.mean(axis=(1, 2), keepdims=True)
    field /= field.std(axis=(1, 2), keepdims=True) + 1e-6
    return field


def to_uint8_chw(canvas: np.ndarray) -> np.ndarray:
    """Float NHWC in [0, 1] -> uint8 NCHW, the layout every dataset of ``bench.data`` stores."""
    return np.ascontiguousarray((np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 3, 1, 2))
