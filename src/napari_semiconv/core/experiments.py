"""The paper's two demonstrations that convolutional instance coloring fails and
semi-convolutional coloring works.

(a) :func:`coloring_dilemma` — the 1-D convolutional coloring dilemma of sec. 3.6.
(b) :func:`dots_experiment` — the synthetic dot-grid experiment of sec. 4.1 / Fig. 3.

Both are deterministic for a given seed and return plain dicts (numpy arrays for the curves,
Python scalars for the summary).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_writer
from .decoders import kmeans_labels
from .operators import embedding_loss, semiconv
from .synthetic.dots import dot_grid

__all__ = ["adjusted_rand_index", "coloring_dilemma", "dots_experiment"]


def adjusted_rand_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985) of two labelings of the same items, from their
    contingency table: (Σ C(n_ij,2) − E) / (½(Σ C(a_i,2) + Σ C(b_j,2)) − E), with
    E = Σ C(a_i,2)·Σ C(b_j,2) / C(n,2). 1 = identical partitions, ≈ 0 = chance.
    When the denominator vanishes (both labelings trivial, e.g. one cluster each) returns 1.0."""
    truth, pred = np.asarray(truth).ravel(), np.asarray(pred).ravel()
    if truth.shape != pred.shape:
        raise ValueError(f"labelings differ in size: {truth.size} vs {pred.size}")
    if truth.size < 2:
        raise ValueError("the adjusted Rand index needs at least 2 labelled items")
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)

    def pairs(n: np.ndarray) -> float:
        n = n.astype(np.float64)
        return float((n * (n - 1) / 2).sum())

    index = pairs(table)
    sum_a, sum_b = pairs(table.sum(1)), pairs(table.sum(0))
    expected = sum_a * sum_b / pairs(np.array([truth.size]))
    maximum = 0.5 * (sum_a + sum_b)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


# ---------------------------------------------------------------------------------------------
# (a) sec. 3.6: the convolutional coloring dilemma in 1-D
# ---------------------------------------------------------------------------------------------


def _circular_conv1d(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(C_in, n) * (C_out, C_in, w) with circular padding: exactly translation-equivariant."""
    half = kernel.shape[-1] // 2
    out = np.zeros((kernel.shape[0], signal.shape[-1]))
    for t in range(kernel.shape[-1]):
        out += kernel[:, :, t] @ np.roll(signal, half - t, axis=-1)
    return out


def coloring_dilemma(periods: int = 3, samples_per_unit: int = 50, seed: int = 0) -> dict:
    """Sec. 3.6: a period-2 signal whose regions [−1,1]+2k cannot be colored apart by any
    translation-invariant operator, but are colored 2k by the semi-convolutional
    Φ_u = u + (1 − x_u)·x'_u.

    Signal: the paper's triangle wave x_u = 1 − |u − 2k| for u ∈ [2k−1, 2k+1] (x = 1 at the
    centres 2k, 0 at the region borders), sampled every ``1/samples_per_unit`` on
    [−(2·periods+1), 2·periods+1), i.e. 2·periods+1 whole periods with centres
    2k, k = −periods..periods. Its derivative is analytic: x'_u = −sign(u − 2k). The triangle is
    the one choice that makes the construction exact: Φ_u = 2k for every u needs
    (1 − x)x' = −(u − 2k), i.e. (1 − x)² = (u − 2k)², i.e. x = 1 − |u − 2k|; a smooth bump
    (e.g. cos²) would move points only near 2k. At a border u = 2k±1, which belongs to both
    closed regions, the half-open convention u ∈ [2k−1, 2k+1) assigns it to region k.

    Two translation-invariant operators are applied: the local part (1 − x_u)·x'_u alone, and a
    random two-layer 1-D CNN (weights from ``seed``, circular padding, which on whole periods is
    exactly the infinite periodic signal). Both give every centre 2k the same color.

    Returns a dict with the curves (``u``, ``x``, ``region``, ``semiconv``, ``local``, ``cnn``),
    the centres, the colors at the centres and the summary numbers
    ``invariant_max_spread_at_centres`` (0: all centres alike), ``semiconv_max_error``
    (max |Φ_u − 2k(u)|, 0 up to round-off) and ``pv_detects_centres`` (the propose-and-verify
    function [x_u = 1] fires exactly at the centres).
    """
    if periods < 1 or samples_per_unit < 2:
        raise ValueError("periods must be >= 1 and samples_per_unit >= 2")
    half_span = 2 * periods + 1
    n = 2 * half_span * samples_per_unit
    u = -half_span + np.arange(n) / samples_per_unit
    k = np.floor((u + 1.0) / 2.0)  # region index: u ∈ [2k−1, 2k+1), centres 2k
    s = u - 2.0 * k  # offset from the region centre, in [−1, 1)
    x = 1.0 - np.abs(s)
    # analytic derivative of the triangle; at the kinks the one-sided value of region k is used
    # (at s = 0 any value gives Φ = u since 1 − x = 0 there)
    dx = np.where(s < 0, 1.0, -1.0)
    local = (1.0 - x) * dx  # translation invariant: depends on x near u only
    semi = u + local  # semi-convolutional: mixes in u (eq. 2)

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1.0, (8, 1, 9))
    w2 = rng.normal(0, 0.5, (3, 8, 9))
    cnn = _circular_conv1d(np.tanh(_circular_conv1d(x[None], w1)), w2)

    centres = np.arange(-periods, periods + 1) * 2
    at = (centres + half_span) * samples_per_unit  # sample index of each centre
    cnn_at = cnn[:, at].T  # (K, 3)
    spread = max(float(np.ptp(local[at])), float(np.ptp(cnn_at, axis=0).max()))
    pv = np.flatnonzero(np.isclose(x, 1.0))
    return {
        "signal": "triangle wave x_u = 1 - |u - 2k| on [2k-1, 2k+1], period 2",
        "u": u,
        "x": x,
        "region": k.astype(np.int64),
        "local": local,
        "cnn": cnn,
        "semiconv": semi,
        "centres": centres.tolist(),
        "local_at_centres": local[at].tolist(),
        "cnn_at_centres": cnn_at.tolist(),
        "semiconv_at_centres": semi[at].tolist(),
        "invariant_max_spread_at_centres": spread,
        "semiconv_max_error": float(np.abs(semi - 2.0 * k).max()),
        "semiconv_distinct_colors": int(np.unique(np.round(semi, 9)).size),
        "pv_detects_centres": bool(np.array_equal(pv, at)),
    }


# ---------------------------------------------------------------------------------------------
# (b) sec. 4.1: the dot grid
# ---------------------------------------------------------------------------------------------


def _small_cnn(embed_dim: int, width: int) -> nn.Sequential:
    """A few 3×3 conv layers (receptive-field radius 5 px, enough to see across a dot) and a 1×1
    embedding layer. Circular padding keeps it exactly translation invariant on the periodic dot
    image (the paper's infinite-domain assumption), so border effects cannot separate dots."""

    def conv(cin: int, cout: int, dilation: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, padding_mode="circular")

    return nn.Sequential(
        conv(1, width, 1),
        nn.ReLU(),
        conv(width, width, 2),
        nn.ReLU(),
        conv(width, width, 2),
        nn.ReLU(),
        nn.Conv2d(width, embed_dim, 1),
    )


def _train_embedding(
    image: torch.Tensor,
    masks: torch.Tensor,
    semi: bool,
    seed: int,
    steps: int,
    lr: float,
    embed_dim: int,
    width: int,
    coord_scale: float,
) -> tuple[torch.Tensor, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # same seed -> same initial weights for both runs
        net = _small_cnn(embed_dim, width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        phi = net(image)[0]  # (D,H,W)
        psi = semiconv(phi, scale=1.0 / coord_scale) if semi else phi
        loss = embedding_loss(psi, masks, reduction="mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        phi = net(image)[0]
        psi = semiconv(phi, scale=1.0 / coord_scale) if semi else phi
    return psi, float(loss.detach())


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _colorise(labels: np.ndarray, seed: int = 7) -> np.ndarray:
    colors = np.random.default_rng(seed).uniform(0.25, 1.0, (int(labels.max()) + 1, 3))
    colors[0] = 0.0
    return colors[labels]


def _write_figure(path: Path, panels: list[tuple[str, np.ndarray]]) -> None:
    """Fig. 3-style panels, written with the Agg canvas (no pyplot state), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(panels), 3.3))
    FigureCanvasAgg(fig)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # the figure is a deterministic re-rendering, so replacing an earlier one is intended
    with atomic_writer(path, "wb", overwrite=True) as handle:
        fig.savefig(handle, format="png", dpi=120)


def dots_experiment(
    seed: int = 0,
    *,
    rows: int = 5,
    cols: int = 5,
    spacing: int = 12,
    radius: float = 3.0,
    steps: int = 100,
    lr: float = 0.01,
    embed_dim: int = 8,
    width: int = 16,
    coord_scale: float | None = None,
    n_init: int = 10,
    figure_path: str | os.PathLike | None = None,
    num_threads: int | None = 1,
) -> dict:
    """Sec. 4.1 / Fig. 3: the same small CNN trained with eq. 5 on a grid of identical dots,
    once convolutional (Ψ = Φ, ``embed_dim``-D) and once semi-convolutional (Ψ = Φ + û, eq. 6),
    from the same seed; the foreground embeddings are clustered by k-means with K = number of
    dots and compared with the truth by the adjusted Rand index.

    Training: Adam (the paper used SGD) on eq. 5 averaged over the dots (``reduction="mean"``;
    Adam is insensitive to the constant factor between that and the paper's sum). The
    attractive-only loss lets the convolutional embedding collapse (its loss goes to ~0) without
    ever separating the dots: it cannot, every dot looks alike to it.

    û is expressed in units of ``coord_scale`` pixels (default: the dot radius), so the
    displacement Φ must learn is at most 1 in magnitude — the output scale of a freshly
    initialised small CNN — while neighbouring dots lie ``spacing / coord_scale`` apart in Ψ.

    Returns ``{"conv_ari", "semiconv_ari", "seconds", "n_dots", "n_pixels", "conv_loss",
    "semiconv_loss" (eq. 5 at the last step), "coord_scale", "steps", "seed", "figure"}`` plus the
    label images
    (``truth``, ``conv_labels``, ``semiconv_labels``) and the ``image``. ``figure`` is the PNG
    path when ``figure_path`` is given (image, truth, conv clusters, semi-conv clusters), else None.

    ``num_threads`` sets torch's intra-op threads while training (restored afterwards; None
    leaves them alone). One thread is the default because these convolutions are so small that
    thread synchronisation dominates: on a busy 2-core machine 2 threads were ~50× slower.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        # numpy's k-means seeding refuses it only after the first network has trained
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if embed_dim < 2:
        raise ValueError(f"embed_dim must be >= 2 (û needs two channels), got {embed_dim}")
    coord_scale = float(radius if coord_scale is None else coord_scale)
    if not coord_scale > 0:
        raise ValueError(f"coord_scale must be positive, got {coord_scale}")
    start = time.perf_counter()
    image_np, masks_np = dot_grid(rows, cols, spacing, radius, seed)
    image = torch.from_numpy(image_np)[None, None]
    masks = torch.from_numpy(masks_np)
    foreground = masks_np.any(0)
    truth = (masks_np * np.arange(1, len(masks_np) + 1)[:, None, None]).sum(0).astype(np.int32)
    k = len(masks_np)

    results: dict = {}
    for name, semi in (("conv", False), ("semiconv", True)):
        with _torch_threads(num_threads):
            psi, loss = _train_embedding(
                image, masks, semi, seed, steps, lr, embed_dim, width, coord_scale
            )
        labels = kmeans_labels(psi, foreground, k, seed=seed, n_init=n_init)
        results[f"{name}_labels"] = labels
        results[f"{name}_loss"] = loss
        results[f"{name}_ari"] = adjusted_rand_index(truth[foreground], labels[foreground])

    figure = None
    if figure_path is not None:
        figure = Path(figure_path)
        _write_figure(
            figure,
            [
                ("(a) image", image_np),
                ("(b) ground truth", _colorise(truth)),
                (f"(c) conv, ARI {results['conv_ari']:.2f}", _colorise(results["conv_labels"])),
                (
                    f"(d) semi-conv, ARI {results['semiconv_ari']:.2f}",
                    _colorise(results["semiconv_labels"]),
                ),
            ],
        )
    results.update(
        seconds=time.perf_counter() - start,
        n_dots=k,
        n_pixels=int(foreground.sum()),
        coord_scale=coord_scale,
        steps=steps,
        seed=seed,
        figure=str(figure) if figure is not None else None,
        image=image_np,
        truth=truth,
    )
    return results
