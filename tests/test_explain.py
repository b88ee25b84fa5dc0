"""captum attributions through the DPP warp, on tiny random-weight models (64 px)."""
from __future__ import annotations

import pytest
import torch

from frpt import explain
from frpt.config import model_config
from frpt.models import RANDOM_WEIGHTS, build_model


@pytest.fixture(scope="module")
def frpt_model():
    torch.manual_seed(0)
    m = build_model(model_config("paper", "frpt", num_classes=4, input_size=64), RANDOM_WEIGHTS).eval()
    return m.requires_grad_(False)  # as the app caches it: gradients must still reach the input


def test_gradcam_layer_is_the_last_stage(frpt_model):
    assert explain.gradcam_layer(frpt_model) is frpt_model.backbone.model.conv_head


def test_gradcam_views_shapes_and_warped_coordinates(frpt_model):
    x = torch.rand(3, 64, 64)
    v = explain.gradcam_views(frpt_model, x)
    assert v.original.shape == v.warped.shape == (64, 64) and v.warped_image.shape == (3, 64, 64)
    assert (v.original >= 0).all() and v.warped.max() > 0
    with torch.no_grad():
        assert torch.allclose(v.warped_image, frpt_model.run_prompt(x[None]).warped[0])


def test_to_input_space_inverts_a_known_warp():
    # grid that reads the left half of the input: warped column j comes from input column j/2
    h = w = 16
    xs = torch.linspace(-1, 0, w)
    ys = torch.linspace(-1, 1, h)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]
    warped = torch.zeros(1, h, w)
    warped[:, :, -2:] = 1.0  # hot at the right edge of the warped image = the middle of the input
    back = explain.to_input_space(warped, grid)[0]
    assert back[:, 7:9].mean() > 0.5  # lands at input columns ~7.5
    assert back[:, :5].max() == 0 and back[:, 12:].max() < 0.5


def test_similarity_gradcam_flows_through_the_warp_and_depends_on_reference(frpt_model):
    x = torch.rand(3, 64, 64)
    with torch.no_grad():
        ref_a = frpt_model(torch.rand(1, 3, 64, 64)).embedding[0]
        ref_b = -ref_a
    a = explain.similarity_gradcam(frpt_model, x, ref_a)
    b = explain.similarity_gradcam(frpt_model, x, ref_b)
    assert a.shape == (64, 64)
    assert not torch.allclose(a, b)


def test_inference_mode_reference_is_accepted_after_clone(frpt_model):
    with torch.inference_mode():
        ref = frpt_model(torch.rand(1, 3, 64, 64)).embedding[0]
    assert explain.similarity_gradcam(frpt_model, torch.rand(3, 64, 64), ref).shape == (64, 64)


def test_integrated_gradients_completeness_on_the_original_pixels(frpt_model):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    f = explain.score_function(frpt_model, 1)
    from captum.attr import IntegratedGradients

    with torch.enable_grad():
        attr, delta = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), n_steps=32,
                                                       return_convergence_delta=True)
    with torch.no_grad():
        gap = float(f(x) - f(torch.zeros_like(x)))
    assert abs(float(attr.sum()) - gap) < 0.35 * abs(gap) + 1e-3  # completeness (loose: random ReLU6 net)
    ig = explain.integrated_gradients(frpt_model, x, 1, n_steps=4)
    assert ig.shape == (1, 64, 64) and ig.sum() > 0


def test_pt_model_has_no_warped_view():
    m = build_model(model_config("paper", "pt", input_size=64), RANDOM_WEIGHTS).eval()
    v = explain.gradcam_views(m, torch.rand(3, 64, 64))
    assert v.warped is None and v.original.shape == (64, 64)
