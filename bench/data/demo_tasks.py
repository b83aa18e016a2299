"""The demo suite's tasks: 32x32 RGB images generated deterministically, no files, no download.

Each task in ``bench/catalog_data/demo.toml`` names a generator here and carries its ``seed`` and ``size``
(examples in all). The first 800 examples are train800, the next 200 val200 and the rest test,
as in VTAB-1k; generators emit examples in random order, so these slices are i.i.d. and disjoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import shapes

TRAIN, VAL = 800, 200
SIZE = shapes.SIZE


@dataclass(frozen=True)
class GeneratedTask:
    images: np.ndarray  # (N, 3, 32, 32) uint8
    labels: np.ndarray  # (N,) int64
    splits: dict  # split name -> index array


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Plain canvases (N, 32, 32, 3) of random, mostly muted colours."""
    canvas = np.empty((n, SIZE, SIZE, 3), np.float32)
    canvas[:] = shapes.random_colours(rng, n, sat=(0.0, 0.6), val=(0.1, 0.9))[:, None, None, :]
    return canvas


def _add_noise(rng: np.random.Generator, canvas: np.ndarray, sigma: float) -> np.ndarray:
    return canvas + sigma * rng.standard_normal(canvas.shape, dtype=np.float32)


def _contrasting(rng: np.random.Generator, background: np.ndarray, min_gap: float = 0.3) -> np.ndarray:
    """Random colours whose luma differs from each background colour (N, 3) by at least ``min_gap``
    (at most 0.5); where 50 draws fail, black or white, whichever is further from the background."""
    luma_w = np.array([0.299, 0.587, 0.114], np.float32)
    colours = shapes.random_colours(rng, len(background))
    for _ in range(50):
        bad = np.abs((colours - background) @ luma_w) < min_gap
        if not bad.any():
            return colours
        colours[bad] = shapes.random_colours(rng, int(bad.sum()), val=(0.0, 1.0))
    colours[bad] = (background[bad] @ luma_w < 0.5)[:, None].astype(np.float32)
    return colours


def digits(rng: np.random.Generator, n: int, num_classes: int):
    """scikit-learn's 1797 bundled 8x8 handwritten digits, scaled to 22-30 px, rotated up to 10
    degrees, placed within 3 px of the centre in colour on a contrasting background, with noise
    (Natural, like SVHN)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    assert num_classes == 10 and n <= len(data.target), "digits has 10 classes and 1797 images"
    order = rng.permutation(len(data.target))[:n]
    bg = shapes.random_colours(rng, n, sat=(0.0, 0.8), val=(0.1, 0.95))
    fg = _contrasting(rng, bg, 0.4)
    canvas = np.empty((n, SIZE, SIZE, 3), np.float32)
    canvas[:] = bg[:, None, None, :]
    sizes = rng.integers(22, 31, n)
    angles = rng.uniform(-10, 10, n)
    for i, (src, side, angle) in enumerate(zip(order, sizes, angles)):
        glyph = Image.fromarray((data.images[src] / 16.0).astype(np.float32), mode="F")
        glyph = np.asarray(glyph.resize((side, side), Image.Resampling.BILINEAR).rotate(angle, Image.Resampling.BILINEAR))
        y, x = (SIZE - side) // 2 + rng.integers(-3, 4, 2)
        y, x = np.clip([y, x], 0, SIZE - side)
        alpha = np.clip(glyph, 0.0, 1.0)[..., None]
        patch = canvas[i, y:y + side, x:x + side]
        canvas[i, y:y + side, x:x + side] = patch * (1 - alpha) + alpha * fg[i]
    return _add_noise(rng, canvas, 0.04), data.target[order]


def textures(rng: np.random.Generator, n: int, num_classes: int):
    """Eight procedural textures (DTD-like): gratings at 0/45/90/135 degrees, checkerboard, dot
    lattice, concentric rings, blotchy noise; random frequency, phase, colours, contrast, jitter."""
    assert num_classes == 8
    labels = _balanced_labels(rng, n, num_classes)
    cy, cx = rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n)
    base = np.array([0, 90, 45, 135, 0, 0, 0, 0], np.float32)[labels]
    theta = np.deg2rad(base + rng.uniform(-15, 15, n)).astype(np.float32)
    u, v = shapes.object_frame(cy, cx, np.ones(n), theta)
    freq = rng.uniform(0.07, 0.22, n).astype(np.float32)[:, None, None] * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)[:, None, None]
    wave_u, wave_v = np.sin(freq * u + phase), np.sin(freq * v + phase)
    pattern = np.empty((n, SIZE, SIZE), np.float32)
    grating = labels < 4
    pattern[grating] = wave_u[grating]
    pattern[labels == 4] = np.sign(wave_u * wave_v)[labels == 4]
    dots = labels == 5
    pattern[dots] = np.where(np.cos(freq[dots] * u[dots]) * np.cos(freq[dots] * v[dots]) > 0.5, 1.0, -1.0)
    rings = labels == 6
    pattern[rings] = np.sin(freq[rings] * np.sqrt(u[rings] ** 2 + v[rings] ** 2) + phase[rings])
    blotches = labels == 7
    pattern[blotches] = np.tanh(2 * shapes.smooth_noise(rng, int(blotches.sum()), 3.0))
    sharp = rng.uniform(1.0, 6.0, n).astype(np.float32)[:, None, None]  # sine ... square wave
    pattern = 0.5 + 0.5 * np.tanh(sharp * pattern) / np.tanh(sharp)
    c0 = shapes.random_colours(rng, n, sat=(0.0, 1.0), val=(0.1, 1.0))
    c1 = _contrasting(rng, c0, 0.2)
    canvas = c0[:, None, None, :] + pattern[..., None] * (c1 - c0)[:, None, None, :]
    return _add_noise(rng, canvas, 0.08), labels


def cells(rng: np.random.Generator, n: int, num_classes: int):
    """Microscopy-like fields of small stained nuclei (PatchCamelyon-like). Class 1 ("abnormal")
    also holds 1-2 larger, irregular, slightly darker nuclei; some normal fields hold one large
    regular nucleus, and stain strength and crowding vary per field, so no single cue decides."""
    assert num_classes == 2
    labels = _balanced_labels(rng, n, num_classes)
    canvas = np.empty((n, SIZE, SIZE, 3), np.float32)
    canvas[:] = (np.array([0.95, 0.82, 0.88], np.float32) + rng.normal(0, 0.04, (n, 3)))[:, None, None, :]
    stain = np.array([0.55, 0.35, 0.70], np.float32) * rng.uniform(0.75, 1.15, (n, 1)).astype(np.float32)
    crowding = rng.uniform(0.3, 0.9, n)
    for _ in range(16):  # regular nuclei, 5 to 14 per field on average
        present = rng.random(n) < crowding
        mask = _blob(rng, n, rng.uniform(1.4, 3.0, n), irregular=0.1) & present[:, None, None]
        shapes.paint(canvas, mask * rng.uniform(0.6, 0.9, n)[:, None, None], stain * rng.uniform(0.8, 1.1, (n, 1)))
    abnormal = labels == 1
    decoy = ~abnormal & (rng.random(n) < 0.4)
    mask = _blob(rng, n, rng.uniform(2.6, 3.4, n), irregular=0.1) & decoy[:, None, None]
    shapes.paint(canvas, mask * 0.85, stain * rng.uniform(0.8, 1.0, (n, 1)))
    for k in range(2):
        present = abnormal & ((k == 0) | (rng.random(n) < 0.4))
        mask = _blob(rng, n, rng.uniform(3.0, 4.2, n), irregular=0.3) & present[:, None, None]
        shapes.paint(canvas, mask * 0.9, stain * rng.uniform(0.6, 0.8, (n, 1)))
    return _add_noise(rng, canvas, 0.05), labels


def _blob(rng: np.random.Generator, n: int, radius: np.ndarray, irregular: float) -> np.ndarray:
    """Masks (N, 32, 32) of one nucleus per image: an ellipse whose radius wobbles with angle."""
    cy, cx = rng.uniform(2, SIZE - 2, (2, n))
    u, v = shapes.object_frame(cy, cx, radius, rng.uniform(0, np.pi, n))
    squash = rng.uniform(0.7, 1.0, n).astype(np.float32)[:, None, None]
    lobes = rng.integers(2, 6, n)[:, None, None]
    wobble = 1 + irregular * np.sin(lobes * np.arctan2(v, u) + rng.uniform(0, 6.3, n)[:, None, None])
    return np.sqrt(u * u + (v / squash) ** 2) <= wobble


TERRAIN_SLOPES = (1.4, 2.0, 2.6, 3.2, 3.8)


def terrain(rng: np.random.Generator, n: int, num_classes: int):
    """Height maps of fractal noise rendered like satellite views (water, fields, rock, snow);
    the class is the spectral slope of the noise, i.e. how rough the land is (EuroSAT-like)."""
    assert num_classes == len(TERRAIN_SLOPES)
    labels = _balanced_labels(rng, n, num_classes)
    slope = np.array(TERRAIN_SLOPES, np.float32)[labels] + rng.uniform(-0.2, 0.2, n).astype(np.float32)
    height = shapes.smooth_noise(rng, n, slope)
    sea = rng.uniform(-1.2, 0.2, n).astype(np.float32)[:, None, None]
    ramp_h = np.array([-3.0, 0.0, 0.4, 1.2, 2.0, 4.0], np.float32)
    ramp_c = np.array([[0.05, 0.15, 0.40], [0.20, 0.45, 0.60], [0.30, 0.55, 0.20],
                       [0.45, 0.40, 0.25], [0.55, 0.50, 0.45], [0.95, 0.95, 0.95]], np.float32)
    tint = rng.normal(0, 0.06, (n, 1, 1, 3)).astype(np.float32)
    level = height - sea
    canvas = np.stack([np.interp(level, ramp_h, ramp_c[:, c]) for c in range(3)], axis=-1).astype(np.float32)
    return _add_noise(rng, canvas + tint, 0.03), labels


def count(rng: np.random.Generator, n: int, num_classes: int):
    """1 to ``num_classes`` small non-overlapping objects of random shape and colour (CLEVR-count-like);
    the class is the number of objects minus one."""
    labels = _balanced_labels(rng, n, num_classes)
    canvas = _background(rng, n)
    kinds = rng.integers(0, 3, (n, num_classes))  # disc, square, triangle
    for i in range(n):
        centres = _spread_points(rng, labels[i] + 1, min_dist=6.5, margin=3.5)
        cy, cx = centres[:, 0], centres[:, 1]
        m = len(centres)
        masks = shapes.shape_masks(kinds[i, :m], cy, cx, rng.uniform(2.0, 3.0, m), rng.uniform(0, np.pi, m))
        colours = _contrasting(rng, np.repeat(canvas[i, :1, 0], m, axis=0), 0.25)
        for mask, colour in zip(masks, colours):
            canvas[i][mask] = colour
    return _add_noise(rng, canvas, 0.05), labels


def _spread_points(rng: np.random.Generator, k: int, min_dist: float, margin: float) -> np.ndarray:
    """``k`` points (k, 2) in the image at least ``min_dist`` apart (rejection sampling)."""
    while True:
        pts = []
        for _ in range(200):
            p = rng.uniform(margin, SIZE - margin, 2)
            if all(np.hypot(*(p - q)) >= min_dist for q in pts):
                pts.append(p)
                if len(pts) == k:
                    return np.array(pts)


def location(rng: np.random.Generator, n: int, num_classes: int):
    """One object (disc, square or triangle; random size, angle, colour) at a random place
    (dSprites-location-like); the class is its horizontal position in ``num_classes`` bins."""
    labels = _balanced_labels(rng, n, num_classes)
    lo, hi = 5.0, SIZE - 5.0
    width = (hi - lo) / num_classes
    cx = lo + (labels + rng.random(n)) * width
    cy = rng.uniform(lo, hi, n)
    canvas = _background(rng, n)
    masks = shapes.shape_masks(rng.integers(0, 3, n), cy, cx, rng.uniform(2.5, 4.5, n), rng.uniform(0, np.pi, n))
    shapes.paint(canvas, masks, _contrasting(rng, canvas[:, 0, 0], 0.3))
    return _add_noise(rng, canvas, 0.05), labels


GENERATORS = {f.__name__: f for f in (digits, textures, cells, terrain, count, location)}


@lru_cache(maxsize=None)
def generate(generator: str, seed: int, size: int, num_classes: int) -> GeneratedTask:
    """The examples of one demo task, identical for identical arguments (cached per process)."""
    if generator not in GENERATORS:
        raise KeyError(f"unknown demo generator {generator!r}; known: {', '.join(GENERATORS)}")
    rng = np.random.default_rng(seed)
    canvas, labels = GENERATORS[generator](rng, size, num_classes)
    images = shapes.to_uint8_chw(canvas)
    images.setflags(write=False)
    labels = np.asarray(labels, np.int64)
    labels.setflags(write=False)
    index = np.arange(len(labels))
    splits = {
        "train800": index[:TRAIN],
        "val200": index[TRAIN:TRAIN + VAL],
        "train800val200": index[:TRAIN + VAL],
        "test": index[TRAIN + VAL:],
    }
    return GeneratedTask(images, labels, splits)
