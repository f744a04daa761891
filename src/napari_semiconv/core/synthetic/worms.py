"""Synthetic C. elegans-like worms, deterministic by seed, sized and counted like BBBC010.

A scene is a bright, vignetted, rounded-square well (as in BBBC010's ``w2`` bright-field channel)
holding articulated, tapered worms that may cross one another. Two renderings of the same scene:

- ``binary``: the foreground union of the worm masks, float32 0/1 (the paper's "binary input"
  protocol for BBBC010, sec. 4.2);
- ``brightfield``: dark worms in the bright well on a dark surround, vignetting, dust, blur and
  signal-dependent noise, uint16 in the range of the real ``w2`` channel (about 90-3000).

Every number below was measured on the 50 BBBC010 training wells (A01-C02); the comparison of the
synthetic statistics with the real ones is in ``docs/synthetic-worms.md`` and is reproduced by
``benchmarks/synthetic_vs_real.py``.

Geometry of one worm: a centre-line of length L whose tangent angle is a sum of a few
low-frequency sine modes, θ(t) = θ0 + Σ_k b_k sin(π k t + φ_k), t ∈ [0, 1] (a smooth,
random "curvature" that gives straight, C- and S-shaped worms and, rarely, coils); a width
profile with a blunt rounded head (t = 0) and a long thin tail (t = 1). The worm is the union of
discs of radius r(t) along the centre-line; q(u) = min_t ‖u − c(t)‖ / r(t) ≤ 1 is its mask, and q
also drives the bright-field shading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["FRAME_SHAPE", "render_worms", "synthetic_worms"]

#: The size of a BBBC010 image (rows, columns).
FRAME_SHAPE = (520, 696)

# Measured on the real training wells (see docs/synthetic-worms.md):
_WELL_HALF = 210.0  # half side of the bright rounded-square well (rows ~82-505, cols ~130-558)
_WELL_CENTRE = (292.0, 346.0)  # its centre in a 520 x 696 frame
# worms per well: 12, 13, 14, 15 in 4, 6, 16, 24 of the 50 wells (mean 14.2)
_WORMS_PER_WELL = (np.array([12, 13, 14, 15]), np.array([4, 6, 16, 24]) / 50)
_LENGTH = (121.0, 11.0)  # centre-line length: mean, sd (px) -> skeleton length ~108 px
_LENGTH_RANGE = (75.0, 165.0)
_RADIUS = (5.0, 0.45)  # half of the widest width: mean, sd (px) -> widest ~10.6 px
_SPACING = 0.6  # centre-line sampling step (px), below the thinnest tail radius x 2
_STRAIGHT = 0.5  # fraction of (dead, rod-like) nearly straight worms
_COILED = 0.04  # fraction of worms curled into a C or O


def _contact_accept(contact: int) -> float:
    """Chance to keep a placement with ``contact`` (see ``_contact``), tuned so that the overlap
    rates match BBBC010's (docs/synthetic-worms.md)."""
    return 0.6 if contact < 0 else 0.75 * np.exp(-(contact - 1) / 5.0)


@dataclass
class _Worm:
    points: np.ndarray  # (M, 2) float64 centre-line, (row, col) frame coordinates
    radii: np.ndarray  # (M,) float64 half-widths along it
    depth: float  # bright-field absorbance at the worm's axis


@dataclass
class _Scene:
    frame: tuple[int, int]
    centre: tuple[float, float]  # well centre
    half: tuple[float, float]  # well half sizes (rows, cols)
    power: float  # superellipse exponent of the well's rounded-square outline
    worms: list[_Worm]


def _centre_line(rng: np.random.Generator, length: float) -> np.ndarray:
    """Points every ``_SPACING`` px along a smooth random curve of ``length``, centred at 0."""
    n = max(int(np.ceil(length / _SPACING)) + 1, 3)
    t = np.linspace(0.0, 1.0, n)
    k = np.arange(1, 4)[:, None]
    if rng.random() < _STRAIGHT:
        amplitude = rng.normal(0.0, [0.12, 0.08, 0.05])
    else:
        amplitude = rng.normal(0.0, [0.7, 0.55, 0.35])
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    theta = rng.uniform(0.0, 2 * np.pi) + (
        amplitude[:, None] * np.sin(np.pi * k * t + phase[:, None])
    ).sum(0)
    if rng.random() < _COILED:  # a steady turn of 2/3 to one loop: C- and O-shaped worms
        theta += rng.choice([-1, 1]) * rng.uniform(4.0, 6.3) * t
    steps = np.stack([np.sin(theta), np.cos(theta)], axis=1) * (length / (n - 1))
    points = np.concatenate([[[0.0, 0.0]], np.cumsum(steps[:-1], axis=0)])
    return points - points.mean(axis=0)


def _width_profile(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """Half-widths: a rounded head at t = 0 and a long taper to a thin tail at t = 1."""
    t = np.linspace(0.0, 1.0, n)
    head = np.sqrt(1.0 - (1.0 - np.minimum(t / rng.uniform(0.06, 0.12), 1.0)) ** 2)
    tail = np.minimum((1.0 - t) / rng.uniform(0.3, 0.45), 1.0) ** 0.9
    # at least 0.75 px: a thinner tube can miss pixel centres and break into pieces
    return np.maximum(radius * np.maximum(head, 0.35) * tail, 0.75)


def _inside_well(points: np.ndarray, scene: _Scene, margin: float) -> bool:
    rel = np.abs(points - np.asarray(scene.centre)) / (np.asarray(scene.half) - margin)
    return bool(((rel**scene.power).sum(axis=1) <= 1.0).all())


def _contact(worm: _Worm, others: list[_Worm]) -> int:
    """How many of ``worm``'s centre-line points (every 4th) lie inside an earlier worm's tube.

    0 with no contact; 1-2 for worms that merely touch or cross with a tip; more for crossings.
    Returns -1 when the tubes come within 1 px without overlapping (side-by-side touching).
    """
    a, ra = worm.points[::4], worm.radii[::4]
    lo, hi = a.min(0) - 16, a.max(0) + 16
    inside = np.zeros(len(a), dtype=bool)
    near_miss = False
    for other in others:
        b, rb = other.points[::4], other.radii[::4]
        near = ((b >= lo) & (b <= hi)).all(axis=1)
        if not near.any():
            continue
        gap = np.linalg.norm(a[:, None] - b[near][None], axis=2) - (ra[:, None] + rb[near][None])
        inside |= (gap < -0.5 * ra[:, None]).any(axis=1)
        near_miss |= bool((gap < 1.0).any())
    n = int(inside.sum())
    return n if n else (-1 if near_miss else 0)


def _draw_scene(
    rng: np.random.Generator,
    frame: tuple[int, int],
    n_worms: int | None,
) -> _Scene:
    """The well and the worms of one image (geometry only; nothing is rasterised here)."""
    h, w = frame
    if (h, w) == FRAME_SHAPE:
        centre_mean, half_mean = _WELL_CENTRE, _WELL_HALF
    else:  # a well fitted to the frame, in the same proportion as in BBBC010
        centre_mean, half_mean = (h / 2 + 0.062 * h, w / 2), _WELL_HALF / 520 * min(h, w)
    jitter = 0.05 * half_mean
    centre = (centre_mean[0] + rng.normal(0, jitter), centre_mean[1] + rng.normal(0, jitter))
    half = tuple(float(v) for v in half_mean * rng.uniform(0.94, 1.04, 2))
    scene = _Scene((h, w), centre, half, float(rng.uniform(3.5, 5.0)), [])
    if n_worms is None:
        drawn = int(rng.choice(_WORMS_PER_WELL[0], p=_WORMS_PER_WELL[1]))
        n_worms = max(1, int(round(drawn * (half_mean / _WELL_HALF) ** 2)))
    # worms keep BBBC010's pixel size; only a well too small for them makes them smaller
    max_length = max(8.0, min(_LENGTH_RANGE[1], 1.6 * (min(half) - 7.0)))
    max_radius = max(1.0, min(half) / 5.0)
    for _ in range(n_worms):
        length = float(np.clip(rng.normal(*_LENGTH), _LENGTH_RANGE[0], _LENGTH_RANGE[1]))
        length = min(length, max_length)
        radius = float(np.clip(rng.normal(*_RADIUS) * (length / _LENGTH[0]) ** 0.3, 3.5, 7.0))
        radius = min(radius, max_radius)
        shape = _centre_line(rng, length)
        radii = _width_profile(rng, len(shape), radius)
        depth = float(np.clip(rng.normal(0.75, 0.12), 0.45, 1.15))
        worm = None
        for attempt in range(60):
            angle = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            offset = np.asarray(centre) + rng.uniform(-1, 1, 2) * np.asarray(half)
            candidate = _Worm(shape @ rot.T + offset, radii, depth)
            if attempt == 59 and worm is None:  # nowhere fits: the well's centre, as it comes
                worm = _Worm(shape @ rot.T + np.asarray(centre), radii, depth)
            if not _inside_well(candidate.points, scene, margin=radius + 2):
                continue
            worm = candidate
            contact = _contact(candidate, scene.worms)
            # real wells have many light contacts (touching, tips crossing) and few deep
            # crossings: keep contacts with a probability that falls with their depth
            if attempt > 40 or contact == 0 or rng.random() < _contact_accept(contact):
                break
        if worm is not None:
            scene.worms.append(worm)
    return scene


def _worm_field(worm: _Worm, window: tuple[int, int, int, int], reach: float = 1.3):
    """q = min over the centre-line of distance / radius, on the worm's box inside ``window``.

    Returns (row0, col0, q) in window coordinates, q float32 (inf beyond ``reach``), or None
    when the worm lies outside the window.
    """
    wy, wx, wh, ww = window
    pts = worm.points - (wy, wx)
    k_max = int(np.ceil(worm.radii.max() * reach)) + 1
    y0, x0 = (np.floor(pts.min(axis=0)).astype(int) - k_max).clip(0)
    y1 = min(int(np.ceil(pts[:, 0].max())) + k_max + 1, wh)
    x1 = min(int(np.ceil(pts[:, 1].max())) + k_max + 1, ww)
    if y0 >= y1 or x0 >= x1:
        return None
    q = np.full((y1 - y0, x1 - x0), np.inf, dtype=np.float32)
    # Speed: thin parts (tail, head tip) get small windows; thick parts every 2nd point (1.2 px
    # apart, the disc union then deviates from the tube by < 0.1 px).
    thin = worm.radii <= 2.5
    thick = np.flatnonzero(~thin)[::2]
    for idx in (np.flatnonzero(thin), thick):
        if idx.size == 0:
            continue
        p, r = pts[idx], worm.radii[idx]
        k = int(np.ceil(r.max() * reach)) + 1
        off = np.arange(-k, k + 1)
        centre = np.rint(p).astype(int)
        py = centre[:, 0, None, None] + off[None, :, None]
        px = centre[:, 1, None, None] + off[None, None, :]
        d = np.hypot(py - p[:, 0, None, None], px - p[:, 1, None, None]) / r[:, None, None]
        keep = (d < reach) & (py >= y0) & (py < y1) & (px >= x0) & (px < x1)
        flat = ((py - y0) * (x1 - x0) + (px - x0))[keep]
        # why minimum.at: several centre-line points reach the same pixel; keep the nearest
        np.minimum.at(q.reshape(-1), flat, d[keep].astype(np.float32))
    return y0, x0, q


def _well_light(scene: _Scene, rng: np.random.Generator, window) -> np.ndarray:
    """Bright-field illumination without worms: vignetted well, dark rim, halo, dark surround."""
    wy, wx, wh, ww = window
    yy = (np.arange(wy, wy + wh, dtype=np.float32) - scene.centre[0])[:, None]
    xx = (np.arange(wx, wx + ww, dtype=np.float32) - scene.centre[1])[None, :]
    ay, ax = scene.half
    p = scene.power
    # separable powers: only the sum and its root are full-size (speed)
    s = ((np.abs(yy) / ay) ** p + (np.abs(xx) / ax) ** p) ** np.float32(1.0 / p)  # 1 on outline
    edge = (1.0 - s) * min(ay, ax)  # ~ distance inside the outline, px
    inside = np.clip(edge / 1.5 + 0.5, 0.0, 1.0)
    peak = rng.uniform(2650, 3000)
    light_y, light_x = rng.normal(0, 0.12 * ay), rng.normal(0, 0.12 * ax)
    rho2 = ((yy - light_y) / ay) ** 2 + ((xx - light_x) / ax) ** 2
    vignette = np.clip(1.0 - rng.uniform(0.3, 0.5) * rho2, 0.25, 1.0)
    rim = 1.0 - 0.35 * np.exp(-(((edge - 2.0) / 2.5) ** 2))
    halo = rng.uniform(40, 140) * np.exp(-np.clip(-edge, 0, None) / 10.0)
    surround = rng.uniform(95, 101)
    return surround + (1 - inside) * halo + inside * peak * vignette * rim


def _dust(scene: _Scene, rng: np.random.Generator, window, absorb: np.ndarray) -> None:
    """Adds small dark specks and large faint blotches inside the well to ``absorb`` in place."""
    wy, wx, wh, ww = window
    n = rng.integers(10, 30)
    for _ in range(n):
        big = rng.random() < 0.25
        sigma = rng.uniform(6, 14) if big else rng.uniform(0.7, 2.5)
        amp = rng.uniform(0.02, 0.07) if big else rng.uniform(0.05, 0.5)
        cy = scene.centre[0] + rng.uniform(-1, 1) * scene.half[0] - wy
        cx = scene.centre[1] + rng.uniform(-1, 1) * scene.half[1] - wx
        r = int(3 * sigma) + 1
        y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, wh)
        x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, ww)
        if y0 >= y1 or x0 >= x1:
            continue
        gy = np.exp(-((np.arange(y0, y1) - cy) ** 2) / (2 * sigma**2))
        gx = np.exp(-((np.arange(x0, x1) - cx) ** 2) / (2 * sigma**2))
        absorb[y0:y1, x0:x1] += amp * gy[:, None] * gx[None, :]


def _render(
    scene: _Scene, rng: np.random.Generator, render: str, window: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterises ``scene`` in ``window`` = (row0, col0, height, width) of its frame."""
    wh, ww = window[2], window[3]
    kept = []
    for worm in scene.worms:
        field = _worm_field(worm, window)
        if field is not None and (field[2] <= 1.0).any():
            kept.append((worm, field))
    masks_arr = np.zeros((len(kept), wh, ww), dtype=bool)
    for mask, (_, (y0, x0, q)) in zip(masks_arr, kept, strict=True):
        mask[y0 : y0 + q.shape[0], x0 : x0 + q.shape[1]] = q <= 1.0
    if render == "binary":
        return masks_arr.any(axis=0).astype(np.float32), masks_arr

    # Bright-field: transmission exp(-absorbance); crossings multiply (absorbances add).
    absorb = np.zeros((wh, ww), dtype=np.float32)
    texture = ndi.gaussian_filter(rng.standard_normal((wh, ww)).astype(np.float32), 1.3)
    texture *= 1.0 / max(float(texture.std()), 1e-6)
    for worm, (y0, x0, q) in kept:
        # a soft body (slightly wider than the mask, as the blur of the optics) with a darker
        # cuticle rim and a mottled gut: the look of live worms in the w2 channel
        body = np.clip((1.25 - q) / 0.5, 0.0, 1.0) ** 1.5
        rim = 0.35 * np.exp(-(((q - 0.85) / 0.18) ** 2))
        sl = (slice(y0, y0 + q.shape[0]), slice(x0, x0 + q.shape[1]))
        absorb[sl] += worm.depth * body * (0.75 + rim + 0.15 * texture[sl])
    _dust(scene, rng, window, absorb)
    image = _well_light(scene, rng, window) * np.exp(-absorb)
    image = ndi.gaussian_filter(image, 0.7)
    # shot noise plus read noise: sd ~3 on the dark surround and ~17 in the bright well (w2)
    image += rng.standard_normal(image.shape).astype(np.float32) * np.sqrt(0.1 * image + 1.0)
    return np.clip(np.rint(image), 0, 4095).astype(np.uint16), masks_arr


def _check_render(render: str) -> str:
    if render not in ("brightfield", "binary"):
        raise ValueError(f"render must be 'brightfield' or 'binary', got {render!r}")
    return render


def _check_shape(shape: object) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, columns), got {shape!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"shape must be at least 16 x 16 pixels, got {shape!r}")
    return h, w


def synthetic_worms(
    seed: int = 0,
    shape: tuple[int, int] = FRAME_SHAPE,
    n_worms: int | None = None,
    render: str = "brightfield",
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic well of worms, deterministic by ``seed``.

    Args:
        seed: the random seed; the same seed, shape and n_worms give the same image and masks.
        shape: image size (rows, columns). At BBBC010's 520 x 696 the well sits where it sits in
            the real images; at another size a well is fitted to the image in the same
            proportion. Worms keep BBBC010's pixel size (only a well too small for them makes them
            shorter), so a smaller image holds fewer worms.
        n_worms: how many worms to place; None draws 12-15 (as in the real wells) scaled by the
            well's area relative to BBBC010's.
        render: "brightfield" (uint16, like the real ``w2`` channel) or "binary" (float32 0/1
            foreground union, the paper's binary input).

    Returns:
        (image (H, W), masks (N, H, W) bool): one mask per worm, overlaps kept. A worm that
        crosses another keeps its full mask in both instances.
    """
    render = _check_render(render)
    frame = _check_shape(shape)
    if n_worms is not None and (
        isinstance(n_worms, bool) or int(n_worms) != n_worms or n_worms < 0
    ):
        raise ValueError(f"n_worms must be a non-negative integer or None, got {n_worms!r}")
    rng = np.random.default_rng(seed)
    scene = _draw_scene(rng, frame, None if n_worms is None else int(n_worms))
    return _render(scene, rng, render, (0, 0, *frame))


def render_worms(
    shape: tuple[int, int],
    rng: np.random.Generator | None = None,
    mode: str = "brightfield",
) -> tuple[np.ndarray, np.ndarray]:
    """A ``shape`` window of a full-size (520 x 696) synthetic well, for training on crops.

    It looks like a random crop of a real BBBC010 image (worms cut by the window's edge, part of
    the well's rim in view) and costs in proportion to the window's area, not the frame's. The
    window's centre is drawn inside the well, so it is rarely empty. A ``shape`` at least as large
    as the frame, or larger than it in either direction (no window of the frame fits), gives a
    whole well fitted to ``shape`` (as ``synthetic_worms``).

    Args:
        shape: window size (rows, columns).
        rng: the random generator (a fresh unseeded one when None).
        mode: "brightfield" or "binary", as ``render`` of ``synthetic_worms``.
    """
    mode = _check_render(mode)
    h, w = _check_shape(shape)
    rng = np.random.default_rng() if rng is None else rng
    # one side equal to the frame's still fits a window (a 520 x 120 strip of the well)
    covers = h >= FRAME_SHAPE[0] and w >= FRAME_SHAPE[1]
    if covers or h > FRAME_SHAPE[0] or w > FRAME_SHAPE[1]:
        scene = _draw_scene(rng, (h, w), None)
        return _render(scene, rng, mode, (0, 0, h, w))
    scene = _draw_scene(rng, FRAME_SHAPE, None)
    cy = scene.centre[0] + rng.uniform(-0.8, 0.8) * scene.half[0]
    cx = scene.centre[1] + rng.uniform(-0.8, 0.8) * scene.half[1]
    y0 = int(np.clip(round(cy - h / 2), 0, FRAME_SHAPE[0] - h))
    x0 = int(np.clip(round(cx - w / 2), 0, FRAME_SHAPE[1] - w))
    return _render(scene, rng, mode, (y0, x0, h, w))
