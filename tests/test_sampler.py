"""The DPP warp (Recasens sampler): identity for uniform saliency, magnification around a peak."""
import math

import pytest
import torch
import torch.nn.functional as F

from frpt.models import SaliencySampler, focus_score, sampling_density


def _peaked(g: int = 31, cy: int = 15, cx: int = 15, weight: float = 20.0, radius: int = 3) -> torch.Tensor:
    s = torch.ones(1, 1, g, g)
    s[..., cy - radius:cy + radius + 1, cx - radius:cx + radius + 1] = weight
    return s / s.sum()


def test_uniform_saliency_is_the_identity_warp():
    sampler = SaliencySampler()
    uniform = torch.full((2, 1, 31, 31), 1 / 961)
    grid = sampler.grid(uniform, (64, 80))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 80), indexing="ij")
    assert torch.allclose(grid[0, ..., 0], xs, atol=1e-5)
    assert torch.allclose(grid[0, ..., 1], ys, atol=1e-5)
    image = torch.rand(2, 3, 64, 80)
    warped, _ = sampler(image, uniform)
    assert torch.allclose(warped, image, atol=2e-3)  # grid exact to 1e-5 -> sub-1e-3 pixel error


def test_peaked_saliency_magnifies_around_the_peak_and_stays_in_range():
    sampler = SaliencySampler()
    grid = sampler.grid(_peaked(cy=10, cx=20), (224, 224))
    assert grid.min() >= -1 and grid.max() <= 1
    density = sampling_density(grid, bins=31)[0]
    # Peak at cell (10, 20) of 31: > 1.5x the uniform sampling density there, < 1 far away.
    assert density[9:12, 19:22].mean() > 1.5
    peak = divmod(int(density.argmax()), 31)
    assert abs(peak[0] - 10) <= 2 and abs(peak[1] - 20) <= 2
    # The identity warp has density 1 everywhere (up to bin-edge effects).
    identity = sampler.grid(torch.full((1, 1, 31, 31), 1 / 961), (224, 224))
    assert sampling_density(identity, bins=8)[0].sub(1).abs().max() < 0.1


def test_gaussian_is_a_fixed_buffer_with_fwhm_13():
    sampler = SaliencySampler()
    assert not list(sampler.parameters())
    row = sampler.gaussian[0, 0, 30]
    half = row >= 0.5
    assert 12 <= int(half.sum()) <= 14  # FWHM of 13 cells


def test_focus_score_rises_when_the_box_is_magnified():
    sampler = SaliencySampler()
    box = (-0.2, -0.2, 0.2, 0.2)
    identity = sampler.grid(torch.full((1, 1, 31, 31), 1 / 961), (128, 128))
    focused = sampler.grid(_peaked(), (128, 128))
    base = focus_score(identity, box).item()
    assert math.isclose(base, 0.04, abs_tol=0.01)  # the box's area share
    assert focus_score(focused, box).item() > 2 * base


def test_gradients_reach_the_saliency():
    sampler = SaliencySampler()
    logits = torch.zeros(1, 961, requires_grad=True)
    saliency = F.softmax(logits, 1).view(1, 1, 31, 31)
    image = torch.rand(1, 3, 32, 32)
    warped, _ = sampler(image, saliency)
    warped[..., :16, :16].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(31, 31), (57, 43)])
def test_grid_shape_follows_the_image(size):
    sampler = SaliencySampler()
    warped, grid = sampler(torch.rand(1, 3, *size), torch.full((1, 1, 31, 31), 1 / 961))
    assert warped.shape == (1, 3, *size) and grid.shape == (1, *size, 2)


def test_separable_smoothing_equals_the_released_codes_conv2d():
    sampler = SaliencySampler()
    maps = torch.rand(3, 1, 91, 91)
    assert torch.allclose(sampler._smooth(maps), F.conv2d(maps, sampler.gaussian), rtol=1e-4)


def test_fft_saliency_conv_equals_a_direct_convolution():
    from frpt.models.prompt import LargeKernelConv2d
    conv = LargeKernelConv2d(24, 1, 31, padding=15, bias=True)
    x = torch.randn(2, 24, 40, 33)
    direct = F.conv2d(x, conv.weight, conv.bias, padding=15)
    assert torch.allclose(conv(x), direct, atol=1e-4 * direct.abs().max().item())


@pytest.mark.parametrize("bound", [0.0, 2.0])
def test_saliency_bound_keeps_huge_logits_from_collapsing_the_warp(bound):
    """With weights as large as the published learning rates produce, the unbounded softmax turns one-hot and
    every sample reads one point; the bounded one caps the largest cell at exp(2B) / (exp(2B) + 960)."""
    from frpt.models.prompt import DiscriminativePerturbationPrompt
    torch.manual_seed(0)
    dpp = DiscriminativePerturbationPrompt(24, kernel_size=31, saliency_bound=bound)
    with torch.no_grad():
        dpp.conv.weight.normal_(0, 10.0)
    features = torch.randn(2, 24, 32, 32)
    out = dpp(torch.rand(2, 3, 64, 64), features)
    top = out.saliency.flatten(1).max(1).values
    spread = out.grid.flatten(1, 2).std(1).min()  # per image and axis; identity warp: ~0.58
    if bound == 0:
        assert (top > 0.99).all() and spread < 0.05
    else:
        cap = math.exp(2 * bound) / (math.exp(2 * bound) + 960)
        assert (top <= cap + 1e-6).all() and spread > 0.3
        assert torch.allclose(out.saliency.sum((1, 2, 3)), torch.ones(2))


def test_grid_stays_finite_under_fp16_autocast():
    """A saliency peaked in a corner leaves ~1e-13 of Gaussian-weighted mass at the far corner: fp16 flushes it to 0
    and the weighted mean became 0 / 0 (NaN losses training the paper preset on a GPU). The grid is computed in
    fp32 whatever the autocast."""
    sampler = SaliencySampler()
    logits = torch.zeros(1, 31 * 31)
    logits[0, 0] = 40.0
    saliency = torch.softmax(logits, 1).view(1, 1, 31, 31)
    reference = sampler.coarse_grid(saliency)
    with torch.autocast("cpu", dtype=torch.float16):
        grid = sampler.coarse_grid(saliency)
    assert grid.dtype == torch.float32
    assert torch.equal(grid, reference)
    assert reference[0, -1, -1].lt(0.9).all()  # the far corner reads well inside the image: the peak pulls it
