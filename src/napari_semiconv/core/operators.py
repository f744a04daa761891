"""Semi-convolutional operators, the instance-embedding loss and the kernels of the paper.

Novotny, Albanie, Larlus, Vedaldi, *Semi-convolutional Operators for Instance Segmentation*,
ECCV 2018. Equation numbers below are the paper's.

- eq. 2   Ψ_u = f(Φ_u, u): a convolutional response mixed with the pixel location
          (:func:`semiconv` with ``mix=...``).
- eq. 3/6 Ψ_u = Φ_u + û, with û = (u_row, u_col, 0, ..., 0) ∈ R^D (:func:`pixel_coordinates`,
          :func:`semiconv`).
- eq. 5   L(Ψ|x, S) = Σ_S 1/|S| Σ_{u∈S} ‖Ψ_u − mean_S Ψ‖ (:func:`embedding_loss`).
- eq. 7   Gaussian kernel, eq. 9 bilateral kernel, eq. 10 Laplacian kernel with a learnable σ
          (:func:`gaussian_kernel`, :func:`bilateral_kernel`, :func:`laplacian_kernel`,
          :class:`LearnableSigma`, :func:`log_one_minus_laplacian`).

Layout convention: embeddings are channel-first, (D,H,W) or (B,D,H,W); channel 0 is the row
(y) coordinate and channel 1 the column (x) coordinate, both in pixels times ``scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "pixel_coordinates",
    "semiconv",
    "embedding_loss",
    "gaussian_kernel",
    "bilateral_kernel",
    "laplacian_kernel",
    "log_one_minus_laplacian",
    "LearnableSigma",
]

MixFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# d/σ below this is treated as this value in log(1 - K_σ): keeps the log and its gradient finite.
_MIN_SCALED_DISTANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# û and Ψ (eq. 2, 3, 6)
# ---------------------------------------------------------------------------------------------


def pixel_coordinates(
    height: int,
    width: int,
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """The zero-padded pixel-coordinate grid û of eq. 6, shape (dim, height, width).

    Channel 0 holds the row index, channel 1 the column index (0-based, times ``scale``), the
    remaining ``dim - 2`` channels are zero. The paper indexes pixels from 1; the constant offset
    cancels in every distance ‖Ψ_u − Ψ_v‖ and so does not matter. ``scale`` multiplies the pixel
    indices: pass ``1 / s`` to express û in units of ``s`` pixels.
    """
    if isinstance(height, bool) or isinstance(width, bool):
        raise TypeError("height and width must be integers, not bool")
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive integers, got {height}x{width}")
    if int(dim) != dim or dim < 2:
        raise ValueError(
            f"dim must be an integer >= 2 (û has a row and a column channel), got {dim}"
        )
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    dtype = dtype or torch.get_default_dtype()
    rows = torch.arange(int(height), device=device, dtype=dtype) * scale
    cols = torch.arange(int(width), device=device, dtype=dtype) * scale
    grid = torch.zeros(int(dim), int(height), int(width), device=device, dtype=dtype)
    grid[0] = rows[:, None]
    grid[1] = cols[None, :]
    return grid


def semiconv(phi: torch.Tensor, mix: MixFn | None = None, *, scale: float = 1.0) -> torch.Tensor:
    """Apply a semi-convolutional operator to a convolutional response Φ.

    ``phi`` is (D,H,W) or (B,D,H,W). Without ``mix`` this is the additive operator of eq. 3/6,
    Ψ = Φ + û, where û comes from :func:`pixel_coordinates` (D >= 2). With ``mix`` it is the
    general operator of eq. 2, Ψ_u = f(Φ_u, u): ``mix(phi, u)`` is called with ``u`` the
    two-channel coordinate grid (rows, columns, times ``scale``) shaped like ``phi``'s leading
    dims, i.e. (2,H,W) or (B,2,H,W), and its result is returned as is.
    """
    if not isinstance(phi, torch.Tensor):
        raise TypeError(f"phi must be a torch.Tensor, got {type(phi).__name__}")
    if phi.ndim not in (3, 4):
        raise ValueError(f"phi must be (D,H,W) or (B,D,H,W), got shape {tuple(phi.shape)}")
    if not phi.is_floating_point():
        raise TypeError(f"phi must be a floating-point tensor, got {phi.dtype}")
    d, h, w = phi.shape[-3:]
    if mix is None:
        if d < 2:
            raise ValueError(f"the additive operator (eq. 3/6) needs D >= 2 channels, got D={d}")
        return phi + pixel_coordinates(h, w, d, device=phi.device, dtype=phi.dtype, scale=scale)
    if not callable(mix):
        raise TypeError("mix must be a callable f(phi, u) -> psi (eq. 2)")
    u = pixel_coordinates(h, w, 2, device=phi.device, dtype=phi.dtype, scale=scale)
    if phi.ndim == 4:
        u = u.unsqueeze(0).expand(phi.shape[0], -1, -1, -1)
    return mix(phi, u)


# ---------------------------------------------------------------------------------------------
# Loss (eq. 5)
# ---------------------------------------------------------------------------------------------


def _as_mask_tensor(masks: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a numpy array or torch.Tensor, got {type(masks).__name__}")
    if masks.is_floating_point() or masks.is_complex():
        raise TypeError(f"masks must be bool or integer (e.g. uint8), got {masks.dtype}")
    return masks.to(device=device) != 0


def _single_image_loss(
    psi: torch.Tensor, masks: torch.Tensor, reduction: str, allow_empty: bool
) -> torch.Tensor:
    d, h, w = psi.shape
    if masks.ndim != 3:
        raise ValueError(f"masks must be an (N,H,W) stack, got shape {tuple(masks.shape)}")
    if tuple(masks.shape[1:]) != (h, w):
        raise ValueError(
            f"masks spatial shape {tuple(masks.shape[1:])} does not match the embedding's "
            f"{(h, w)}; resize the masks to the embedding resolution"
        )
    n = masks.shape[0]
    if n == 0:
        return psi.sum() * 0.0  # no instance, no target; keep the graph connected
    flat = masks.reshape(n, h * w)
    # a pixel claimed by two or more instances has no single target: drop it from every instance
    owned = flat & (flat.sum(0, keepdim=True) == 1)
    counts = owned.sum(1)
    empty = counts == 0
    if bool(empty.any()):
        if not allow_empty:
            bad = torch.nonzero(empty).flatten().tolist()
            raise ValueError(
                f"empty instance(s) at index {bad}: no pixels, or all pixels in overlaps with "
                "other instances; remove them from the mask stack (or pass allow_empty=True)"
            )
        owned, counts = owned[~empty], counts[~empty]
        if owned.shape[0] == 0:
            return psi.sum() * 0.0
    emb = psi.reshape(d, h * w).transpose(0, 1)  # (P, D)
    weights = owned.to(psi.dtype)
    means = (weights @ emb) / counts.to(psi.dtype)[:, None]  # (N, D) mean_S Ψ
    inst, pix = torch.nonzero(owned, as_tuple=True)  # one row per (instance, pixel) pair
    # vector_norm's gradient is 0 (not NaN) at a zero distance, so a collapsed instance is fine
    dist = torch.linalg.vector_norm(emb[pix] - means[inst], dim=1)
    per_instance = torch.zeros(owned.shape[0], dtype=psi.dtype, device=psi.device)
    per_instance = per_instance.index_add(0, inst, dist) / counts.to(psi.dtype)
    return per_instance.sum() if reduction == "sum" else per_instance.mean()


def embedding_loss(
    psi: torch.Tensor,
    masks: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    *,
    reduction: str = "sum",
    allow_empty: bool = False,
) -> torch.Tensor:
    """The attractive instance-embedding loss of eq. 5.

    L(Ψ|x, S) = Σ_{S} (1/|S|) Σ_{u∈S} ‖Ψ_u − (1/|S|) Σ_{v∈S} Ψ_v‖ — the Euclidean distance,
    *not* squared (the paper found it more robust).

    Args:
        psi: embeddings (D,H,W), or (B,D,H,W) with ``masks`` a sequence of B stacks.
        masks: (N,H,W) bool/integer stack, one mask per instance. Background pixels (in no mask)
            are ignored; pixels claimed by two or more instances are excluded from all of them.
        reduction: ``"sum"`` over instances (the paper) or ``"mean"`` over instances. For a batch
            the per-image values are averaged over images.
        allow_empty: when False (default) an instance with no pixel left (empty, or entirely in
            overlaps) is a ValueError; when True such instances are skipped.

    Returns a scalar tensor (0 with a connected graph when there is no instance).

    Raises ValueError for wrong ndim, mismatched shapes, empty instances or non-finite
    embeddings, TypeError for wrong types.
    """
    if not isinstance(psi, torch.Tensor):
        raise TypeError(f"psi must be a torch.Tensor, got {type(psi).__name__}")
    if not psi.is_floating_point():
        raise TypeError(f"psi must be a floating-point tensor, got {psi.dtype}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if psi.ndim not in (3, 4):
        raise ValueError(f"psi must be (D,H,W) or (B,D,H,W), got shape {tuple(psi.shape)}")
    if not bool(torch.isfinite(psi).all()):
        bad = int((~torch.isfinite(psi)).sum())
        raise ValueError(f"psi contains {bad} NaN/inf value(s); the embedding has diverged")
    if psi.ndim == 3:
        if isinstance(masks, (list, tuple)):
            raise ValueError("for a single (D,H,W) embedding pass one (N,H,W) mask stack")
        return _single_image_loss(psi, _as_mask_tensor(masks, psi.device), reduction, allow_empty)
    if isinstance(masks, (torch.Tensor, np.ndarray)) and masks.ndim == 4:
        masks = list(masks)
    if not isinstance(masks, (list, tuple)) or len(masks) != psi.shape[0]:
        got = len(masks) if isinstance(masks, (list, tuple)) else type(masks).__name__
        raise ValueError(
            f"a batched psi (B={psi.shape[0]}) needs a sequence of B (N,H,W) mask stacks, got {got}"
        )
    losses = [
        _single_image_loss(p, _as_mask_tensor(m, psi.device), reduction, allow_empty)
        for p, m in zip(psi, masks, strict=True)
    ]
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# Kernels (eq. 7, 9, 10)
# ---------------------------------------------------------------------------------------------


def _difference(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{what}: both embeddings must be torch tensors")
    try:
        return a - b
    except RuntimeError as exc:
        raise ValueError(
            f"{what}: embedding shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast"
        ) from exc


def _check_sigma(sigma: float | torch.Tensor, what: str) -> None:
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() == 1 and not bool(sigma.detach() > 0):
            raise ValueError(f"{what}: sigma must be positive, got {float(sigma)}")
    elif not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"{what}: sigma must be a finite positive number, got {sigma!r}")


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Gaussian kernel of eq. 7: K(u,v) = exp(−‖Ψ_u − Ψ_v‖² / 2).

    ``a`` and ``b`` are broadcastable embedding tensors whose embedding axis is ``dim``; for all
    pairs of P and Q embeddings pass ``a[:, None, :]`` and ``b[None, :, :]``.
    """
    diff = _difference(a, b, "gaussian_kernel")
    return torch.exp(-0.5 * (diff * diff).sum(dim=dim))


def bilateral_kernel(
    pos_a: torch.Tensor,
    pos_b: torch.Tensor,
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    *,
    spatial_scale: float = 1.0,
    appearance_scale: float = 1.0,
    dim: int = -1,
) -> torch.Tensor:
    """Bilateral kernel of eq. 9: exp(−‖u − v‖²/2) · exp(−‖Φ^a_u − Φ^a_v‖²/2).

    ``pos_*`` are the (spatial) positions, ``feat_*`` the appearance features, all with the
    embedding axis at ``dim``. Sec. 3.4 notes the two parts should be rescaled before comparison:
    positions are divided by ``spatial_scale`` and features by ``appearance_scale``. Passing the
    steered positions u + Φ^g_u instead of u gives the steered kernel of eq. 8 (= eq. 7).
    """
    for name, value in (("spatial_scale", spatial_scale), ("appearance_scale", appearance_scale)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"bilateral_kernel: {name} must be finite and positive, got {value}")
    dp = _difference(pos_a, pos_b, "bilateral_kernel (positions)") / spatial_scale
    df = _difference(feat_a, feat_b, "bilateral_kernel (features)") / appearance_scale
    return torch.exp(-0.5 * (dp * dp).sum(dim=dim)) * torch.exp(-0.5 * (df * df).sum(dim=dim))


def laplacian_kernel(
    a: torch.Tensor, b: torch.Tensor, sigma: float | torch.Tensor, *, dim: int = -1
) -> torch.Tensor:
    """Laplacian kernel of eq. 10: K_σ(u,v) = exp(−‖Ψ_u − Ψ_v‖ / σ).

    ``sigma`` may be a float or a tensor (e.g. ``LearnableSigma().sigma``), so the gradient
    reaches log σ. Uses the Euclidean distance, not its square (more robust to outliers).
    """
    _check_sigma(sigma, "laplacian_kernel")
    dist = torch.linalg.vector_norm(_difference(a, b, "laplacian_kernel"), dim=dim)
    return torch.exp(-dist / sigma)


def log_one_minus_laplacian(dist: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """log(1 − K_σ) for K_σ = exp(−d/σ) (eq. 10), computed as log(−expm1(−d/σ)).

    The naive log(1 − exp(−d/σ)) loses all precision for small d/σ and is −inf at d = 0;
    ``expm1`` keeps precision and d/σ is clamped below at 1e-6, so the result (≥ about −13.8)
    and its gradient stay finite. Together with log K_σ = −d/σ this gives the binary cross-entropy
    of K_σ against a mask without ever forming 1 − K_σ.
    """
    _check_sigma(sigma, "log_one_minus_laplacian")
    scaled = (dist / sigma).clamp_min(_MIN_SCALED_DISTANCE)
    return torch.log(-torch.expm1(-scaled))


class LearnableSigma(nn.Module):
    """The learnable scalar σ of the Laplacian kernel (eq. 10), parameterised as log σ.

    Optimising log σ keeps σ positive without constraints. ``module(dist)`` returns
    K_σ = exp(−dist/σ); :meth:`log_kernel` and :meth:`log_one_minus_kernel` give the two logs the
    binary cross-entropy of sec. 3.5 needs.
    """

    def __init__(self, init_sigma: float = 2.0) -> None:
        super().__init__()
        if not (isinstance(init_sigma, (int, float)) and math.isfinite(init_sigma)):
            raise ValueError(f"init_sigma must be a finite number, got {init_sigma!r}")
        if init_sigma <= 0:
            raise ValueError(f"init_sigma must be positive, got {init_sigma}")
        self.log_sigma = nn.Parameter(torch.tensor(math.log(float(init_sigma))))

    @property
    def sigma(self) -> torch.Tensor:
        """σ = exp(log σ), a 0-d tensor attached to the graph."""
        return self.log_sigma.exp()

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """K_σ for given distances ‖Ψ_u − Ψ_v‖ (eq. 10)."""
        return torch.exp(self.log_kernel(dist))

    def log_kernel(self, dist: torch.Tensor) -> torch.Tensor:
        """log K_σ = −dist/σ, exact, used as the additive logit correction of sec. 3.5."""
        return -dist * torch.exp(-self.log_sigma)

    def log_one_minus_kernel(self, dist: torch.Tensor) -> torch.Tensor:
        """log(1 − K_σ), numerically safe (see :func:`log_one_minus_laplacian`)."""
        return log_one_minus_laplacian(dist, self.sigma)

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma.detach()):.4g}"
