"""What-if prompt edits (frpt.models.PromptEdit, frpt.whatif): the model really uses them, the default edit is the
learned prompt bit for bit, and one query's ranking under the learned, edited and no prompt."""
import numpy as np
import pytest
import torch

from frpt.config import model_config
from frpt.models import RANDOM_WEIGHTS, PromptEdit, build_model
from frpt.whatif import IDENTITY, embed_edited, rank_query, what_if

SIZE = 64


@pytest.fixture(scope="module")
def crop_model():
    torch.manual_seed(0)
    model = build_model(model_config("compact", "frpt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS).eval()
    torch.nn.init.normal_(model.prompt.conv.weight, std=1.0)  # a saliency that is not flat, so edits move the box
    return model


@pytest.fixture(scope="module")
def warp_model():
    torch.manual_seed(0)
    model = build_model(model_config("paper", "frpt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS).eval()
    torch.nn.init.normal_(model.prompt.conv.weight, std=1e-3)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("which", ["crop_model", "warp_model"])
def test_the_default_edit_is_the_learned_prompt_exactly(request, which, images):
    model = request.getfixturevalue(which)
    with torch.no_grad():
        assert torch.equal(model(images).embedding, model(images, edit=PromptEdit()).embedding)
    assert PromptEdit().is_learned and PromptEdit().describe() == "learned"
    assert not PromptEdit(temperature=0.5).is_learned


@pytest.mark.parametrize("which", ["crop_model", "warp_model"])
def test_the_model_uses_the_edited_temperature(request, which, images):
    model = request.getfixturevalue(which)
    with torch.no_grad():
        learned = model(images)
        sharper = model(images, edit=PromptEdit(temperature=0.25))
    assert sharper.prompt.saliency.amax((1, 2, 3)).gt(learned.prompt.saliency.amax((1, 2, 3))).all()
    assert (sharper.embedding - learned.embedding).abs().max() > 1e-3


def test_identity_is_no_prompt(crop_model, warp_model, images):
    with torch.no_grad():
        crop = crop_model.run_prompt(images, edit=IDENTITY)
        warp = warp_model.run_prompt(images, edit=IDENTITY)
        maps, _ = crop_model.view_maps(images, edit=IDENTITY)
    assert torch.allclose(crop.warped, images, atol=1e-5)
    assert torch.allclose(warp.warped, images, atol=1e-4)  # uniform saliency: the sampler's identity warp
    # the crop views of an identity crop are the original's maps, not a second pass over the same image
    assert maps["crop"] is maps["orig"] and maps["crop-flip"] is maps["flip"]


def test_crop_scale_and_shift_move_the_box_and_keep_it_inside(crop_model, images):
    with torch.no_grad():
        features = crop_model.prompt_features(images)
        saliency = crop_model.prompt.saliency(features)
        learned = crop_model.prompt.box(saliency)
        smaller = crop_model.prompt.box(saliency, PromptEdit(scale=0.5))
        moved = crop_model.prompt.box(saliency, PromptEdit(scale=0.5, shift=(0.9, -0.9)))
    assert torch.allclose(smaller[:, 2:], learned[:, 2:] * 0.5)
    # pushed far right and up: the box stops at the image's edge
    assert torch.allclose(moved[:, 0], 1 - moved[:, 2]) and torch.allclose(moved[:, 1], moved[:, 3])
    assert PromptEdit(scale=0.5, shift=(0.9, -0.9)).describe() == "scale=0.5, shift=(+0.90,-0.90)"


def test_a_focus_point_drives_the_warp_there(warp_model, images):
    edit = PromptEdit(focus=(0.8, 0.2), focus_width=0.1)
    with torch.no_grad():
        out = warp_model.run_prompt(images, edit=edit)
    peak = out.saliency[0, 0].flatten().argmax().item()
    y, x = divmod(peak, out.saliency.shape[-1])
    assert x / 30 == pytest.approx(0.8, abs=0.04) and y / 30 == pytest.approx(0.2, abs=0.04)
    # the centre of the output reads the input closer to the focus point than the identity does
    centre = out.grid[0, SIZE // 2, SIZE // 2]
    assert centre[0] > 0.05 and centre[1] < -0.05


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(scale=-1.0), dict(focus_width=0.0)])
def test_unusable_edits_are_refused(bad):
    with pytest.raises(ValueError, match="not usable"):
        PromptEdit(**bad)


def test_known_maps_stand_in_for_the_backbone(crop_model, images):
    with torch.no_grad():
        maps, _ = crop_model.view_maps(images)
        fresh = crop_model(images).embedding
        reused = crop_model(images, known={"orig": maps["orig"], "flip": maps["flip"]}).embedding
    assert torch.allclose(fresh, reused, atol=1e-6)


def test_edited_embedding_leaves_the_shared_model_in_eval_mode(crop_model, images):
    crop_model.eval()
    edited = embed_edited(crop_model, images, PromptEdit(temperature=0.5), precision="fp32")
    assert not crop_model.training
    learned = embed_edited(crop_model, images, None, precision="fp32")
    with torch.no_grad():
        expected = crop_model(images, edit=PromptEdit(temperature=0.5)).embedding.numpy()
    assert np.allclose(edited, expected, atol=1e-5) and np.abs(edited - learned).max() > 1e-3


def test_rank_query_scores_ap_and_first_hit_leaving_the_query_out():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2], [0.1, 0.9]], np.float32)
    labels = np.array([0, 1, 0, 0, 1])
    out = rank_query(gallery[0], gallery, labels, k=3, label=0, exclude=0)
    # order without row 0: 1 (miss), 3 (hit), 4 (miss), 2 (hit) -> hits at ranks 2 and 4
    assert out.rows.tolist() == [1, 3, 4] and out.hits.tolist() == [False, True, False]
    assert out.first_hit == 2 and out.average_precision == pytest.approx((1 / 2 + 2 / 4) / 2)
    unlabelled = rank_query(gallery[0], gallery, labels, k=2)
    assert unlabelled.hits is None and unlabelled.average_precision is None and unlabelled.first_hit is None


def test_what_if_reports_changes_against_learned_and_no_prompt():
    gallery = np.array([[1, 0], [0, 1], [0.7, 0.7]], np.float32)
    labels = np.array([0, 1, 0])
    vectors = {"learned": np.array([0, 1], np.float32), "edited": np.array([1, 0.1], np.float32),
               "identity": np.array([0.2, 1], np.float32)}
    result = what_if(vectors, PromptEdit(temperature=0.5), gallery, labels, 2, label=0)
    assert result.learned.first_hit == 2 and result.edited.first_hit == 1
    assert result.rank_change("learned") == -1 and result.ap_change("learned") > 0
    assert result.ap_change("identity") == pytest.approx(result.edited.average_precision
                                                         - result.identity.average_precision)
