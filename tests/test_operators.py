"""Semi-convolutional operators, eq. 5 loss and kernels against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from napari_semiconv.core.operators import (
    LearnableSigma,
    bilateral_kernel,
    embedding_loss,
    gaussian_kernel,
    laplacian_kernel,
    log_one_minus_laplacian,
    pixel_coordinates,
    semiconv,
)

# --------------------------------------------------------------------------- û and Ψ (eq. 3, 6)


def test_pixel_coordinates_rows_cols_and_zero_padding():
    u = pixel_coordinates(3, 4, 5)
    assert u.shape == (5, 3, 4)
    assert u[0, 2, 1] == 2 and u[1, 2, 1] == 1  # channel 0 = row, channel 1 = column
    assert torch.equal(u[0, :, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(u[1, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert torch.count_nonzero(u[2:]) == 0


def test_pixel_coordinates_scale_dtype():
    u = pixel_coordinates(2, 3, 2, scale=0.5, dtype=torch.float64)
    assert u.dtype == torch.float64
    assert u[1, 0, 2] == 1.0 and u[0, 1, 0] == 0.5


@pytest.mark.parametrize(
    "args, kwargs, word",
    [((0, 3, 2), {}, "height"), ((3, 3, 1), {}, "dim"), ((3, 3, 2), {"scale": 0.0}, "scale")],
)
def test_pixel_coordinates_bad_input(args, kwargs, word):
    with pytest.raises(ValueError, match=word):
        pixel_coordinates(*args, **kwargs)


def test_semiconv_additive_single_and_batched():
    phi = torch.randn(2, 4, 3, 5)
    psi = semiconv(phi)
    u = pixel_coordinates(3, 5, 4)
    assert torch.allclose(psi, phi + u)
    assert torch.allclose(semiconv(phi[0]), phi[0] + u)
    # û in units of 4 pixels
    assert torch.allclose(semiconv(phi, scale=0.25), phi + u * 0.25)


def test_semiconv_mix_hook_receives_coordinates():
    phi = torch.zeros(2, 3, 2, 3)
    seen = {}

    def mix(p, u):
        seen["u"] = u
        return torch.cat([p, u], dim=1)  # a non-additive f(Φ, u) (eq. 2)

    psi = semiconv(phi, mix=mix)
    assert seen["u"].shape == (2, 2, 2, 3)
    assert psi.shape == (2, 5, 2, 3)
    assert psi[1, 3, 1, 2] == 1 and psi[1, 4, 1, 2] == 2


def test_semiconv_bad_input():
    with pytest.raises(ValueError, match="D >= 2"):
        semiconv(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(D,H,W\)"):
        semiconv(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="floating"):
        semiconv(torch.zeros(2, 4, 4, dtype=torch.int64))


# --------------------------------------------------------------------------- eq. 5


def _psi(values):
    """(H,W,D) nested list -> (D,H,W) float64 tensor."""
    return torch.tensor(values, dtype=torch.float64).permute(2, 0, 1).contiguous()


def test_loss_is_exactly_zero_for_constant_instances():
    psi = torch.zeros(3, 4, 4, dtype=torch.float64)
    psi[:, :2] = torch.tensor([1.0, -2.5, 0.25])[:, None, None]
    psi[:, 2:] = torch.tensor([7.0, 3.0, -1.0])[:, None, None]
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2], masks[1, 2:] = True, True
    assert embedding_loss(psi, masks).item() == 0.0
    assert embedding_loss(psi, masks, reduction="mean").item() == 0.0


def test_loss_hand_computed_two_instances():
    # 1×5 image, D=2. Instance A = pixels 0,1: (0,0),(2,0), mean (1,0), distances 1,1 -> 1.
    # Instance B = pixels 2,3,4: (0,0),(0,0),(0,3), mean (0,1), distances 1,1,2 -> 4/3.
    psi = _psi([[[0, 0], [2, 0], [0, 0], [0, 0], [0, 3]]])
    masks = np.array([[[1, 1, 0, 0, 0]], [[0, 0, 1, 1, 1]]], dtype=np.uint8)
    assert embedding_loss(psi, masks).item() == pytest.approx(1 + 4 / 3, abs=1e-12)
    assert embedding_loss(psi, masks, reduction="mean").item() == pytest.approx(
        (1 + 4 / 3) / 2, abs=1e-12
    )


def test_loss_is_euclidean_not_squared():
    # one instance (0,0),(6,8): mean (3,4), each 5 away -> 5 (squared would give 25)
    psi = _psi([[[0, 0], [6, 8]]])
    assert embedding_loss(psi, np.ones((1, 1, 2), bool)).item() == pytest.approx(5.0)


def test_loss_ignores_overlaps_and_background():
    psi = torch.randn(4, 6, 6, dtype=torch.float64)
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, :3, :4] = True
    masks[1, 2:5, 2:] = True  # overlaps instance 0 on rows 2, cols 2..3
    overlap = masks[0] & masks[1]
    background = ~(masks[0] | masks[1])
    assert overlap.any() and background.any()
    before = embedding_loss(psi, masks)
    changed = psi.clone()
    changed[:, overlap] = 1e3
    changed[:, background] = -1e3
    assert embedding_loss(changed, masks).item() == pytest.approx(before.item(), abs=1e-12)
    # and equals the loss with the overlap removed from both masks
    assert embedding_loss(psi, masks & ~overlap).item() == pytest.approx(before.item(), abs=1e-12)
    # while changing an owned pixel does change it
    changed[:, 0, 0] = 50.0
    assert embedding_loss(changed, masks).item() > before.item() + 1.0


def test_loss_batched_is_mean_over_images():
    psi = torch.randn(2, 3, 5, 5)
    m0 = torch.zeros(1, 5, 5, dtype=torch.bool)
    m0[0, 1:3, 1:4] = True
    m1 = torch.zeros(2, 5, 5, dtype=torch.bool)
    m1[0, :2], m1[1, 3:] = True, True
    expected = (embedding_loss(psi[0], m0) + embedding_loss(psi[1], m1)) / 2
    assert torch.allclose(embedding_loss(psi, [m0, m1]), expected)


def test_loss_gradient_is_finite_even_when_collapsed():
    psi = torch.ones(2, 3, 3, requires_grad=True)
    masks = torch.ones(1, 3, 3, dtype=torch.bool)
    embedding_loss(psi, masks).backward()
    assert torch.isfinite(psi.grad).all()
    phi = torch.randn(8, 6, 6, requires_grad=True)
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, :2], masks[1, 4:] = True, True
    embedding_loss(semiconv(phi), masks).backward()
    assert torch.isfinite(phi.grad).all()
    assert phi.grad[:, 0].abs().sum() > 0
    assert phi.grad[:, 2:4].abs().sum() == 0  # background rows get no gradient


def test_loss_no_instances_is_zero_with_graph():
    psi = torch.randn(2, 4, 4, requires_grad=True)
    loss = embedding_loss(psi, torch.zeros(0, 4, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert psi.grad is not None


def test_loss_bad_input_messages():
    psi = torch.zeros(2, 4, 4)
    good = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="does not match"):
        embedding_loss(psi, torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty instance"):
        embedding_loss(psi, torch.cat([good, torch.zeros(1, 4, 4, dtype=torch.bool)]))
    with pytest.raises(ValueError, match="overlaps"):  # an instance entirely inside another
        inner = torch.zeros(1, 4, 4, dtype=torch.bool)
        inner[0, 1, 1] = True
        embedding_loss(psi, torch.cat([good, inner]))
    bad = psi.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        embedding_loss(bad, good)
    bad[0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        embedding_loss(bad, good)
    with pytest.raises(ValueError, match=r"\(D,H,W\)"):
        embedding_loss(torch.zeros(4, 4), good)
    with pytest.raises(ValueError, match=r"\(N,H,W\)"):
        embedding_loss(psi, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or integer"):
        embedding_loss(psi, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="reduction"):
        embedding_loss(psi, good, reduction="max")
    with pytest.raises(ValueError, match="sequence of B"):
        embedding_loss(torch.zeros(2, 2, 4, 4), [good])


def test_loss_allow_empty_skips_empty_instances():
    psi = _psi([[[0, 0], [6, 8]]])
    masks = np.array([[[1, 1]], [[0, 0]]], dtype=bool)
    assert embedding_loss(psi, masks, allow_empty=True).item() == pytest.approx(5.0)


# --------------------------------------------------------------------------- kernels (eq. 7-10)


def test_gaussian_kernel_value():
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    assert gaussian_kernel(a, b).item() == pytest.approx(math.exp(-1.0))
    assert gaussian_kernel(a, a).item() == 1.0
    # all pairs via broadcasting: P=2 points against Q=1 point
    pts, ref = torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    k = gaussian_kernel(pts[:, None, :], ref[None, :, :])
    assert torch.allclose(k, torch.tensor([[math.exp(-2.0)], [math.exp(-2.5)]]))
    # embedding axis first: (D,H,W) against one (D,1,1) seed
    k = gaussian_kernel(torch.zeros(2, 3, 4), torch.tensor([0.0, 2.0])[:, None, None], dim=0)
    assert k.shape == (3, 4) and torch.allclose(k, torch.full((3, 4), math.exp(-2.0)))


def test_bilateral_kernel_values_and_eq8():
    pa, pb = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    fa, fb = torch.tensor([0.0]), torch.tensor([2.0])
    assert bilateral_kernel(pa, pb, fa, fb).item() == pytest.approx(math.exp(-0.5 - 2.0))
    val = bilateral_kernel(pa, pb, fa, fb, spatial_scale=2.0, appearance_scale=4.0).item()
    assert val == pytest.approx(math.exp(-0.125 - 0.125))
    # eq. 8: steered positions u + Φ^g inside the bilateral kernel = Gaussian kernel of Ψ (eq. 7)
    u, v = torch.tensor([3.0, 1.0]), torch.tensor([0.0, 5.0])
    gu, gv = torch.tensor([-1.0, 0.5]), torch.tensor([1.0, -2.0])
    au, av = torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.4])
    steered = bilateral_kernel(u + gu, v + gv, au, av)
    assert steered.item() == pytest.approx(
        gaussian_kernel(torch.cat([u + gu, au]), torch.cat([v + gv, av])).item()
    )


def test_laplacian_kernel_value():
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])
    assert laplacian_kernel(a, b, 2.0).item() == pytest.approx(math.exp(-2.5))
    assert laplacian_kernel(a, a, 2.0).item() == 1.0
    with pytest.raises(ValueError, match="sigma"):
        laplacian_kernel(a, b, 0.0)
    with pytest.raises(ValueError, match="broadcast"):
        laplacian_kernel(torch.zeros(3), torch.zeros(4), 1.0)


def test_log_one_minus_laplacian_is_accurate_and_finite():
    d = torch.tensor([0.0, 1e-9, 1e-3, 1.0, 50.0], dtype=torch.float64, requires_grad=True)
    out = log_one_minus_laplacian(d, 2.0)
    assert torch.isfinite(out).all()
    assert out[3].item() == pytest.approx(math.log(1 - math.exp(-0.5)), rel=1e-12)
    assert out[2].item() == pytest.approx(math.log(-math.expm1(-5e-4)), rel=1e-12)
    assert out[4].item() == pytest.approx(math.log1p(-math.exp(-25)), abs=1e-15)
    assert out[0].item() == pytest.approx(math.log(1e-6), rel=1e-3)  # clamped, not -inf
    out.sum().backward()
    assert torch.isfinite(d.grad).all()


def test_learnable_sigma_parameterised_as_log_and_gradient_reaches_it():
    ls = LearnableSigma(2.0)
    names = [n for n, _ in ls.named_parameters()]
    assert names == ["log_sigma"]
    assert ls.log_sigma.item() == pytest.approx(math.log(2.0))
    assert ls.sigma.item() == pytest.approx(2.0)
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    k = laplacian_kernel(a, b, ls.sigma)
    k.backward()
    # dK/d log σ = K · d/σ = e^{-1/2} · 1/2
    assert ls.log_sigma.grad.item() == pytest.approx(math.exp(-0.5) * 0.5, rel=1e-6)
    dist = torch.tensor([0.0, 1.0, 4.0])
    assert torch.allclose(ls(dist), torch.exp(-dist / 2.0))
    assert torch.allclose(ls.log_kernel(dist), -dist / 2.0)
    ls.zero_grad()
    ls.log_one_minus_kernel(dist[1:]).sum().backward()
    assert ls.log_sigma.grad.abs().item() > 0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_learnable_sigma_bad_init(bad):
    with pytest.raises(ValueError, match="init_sigma"):
        LearnableSigma(bad)
