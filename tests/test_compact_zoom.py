"""The compact preset's zoom views (issue 30, a departure): a square part zoom on the crop prompt's saliency peak,
its half-side chosen on the validation classes, cached apart per half-side, stored in the config."""
import json

import numpy as np
import pytest
import torch

from frpt.checkpoint import card_seal, load_checkpoint, save_checkpoint
from frpt.compact import ZOOM_HALVES, train_compact
from frpt.config import model_config, train_config
from frpt.data import build_dataset, build_transform
from frpt.errors import CheckpointError, ConfigError
from frpt.evaluation import evaluate
from frpt.feature_cache import cache_key, cache_split
from frpt.models import RANDOM_WEIGHTS, PromptEdit, build_model
from frpt.models.crop import CropPrompt

SIZE = 64
SIX = "orig,flip,crop,crop-flip,zoom,zoom-flip"


def _model(**overrides):
    torch.manual_seed(0)
    return build_model(model_config("compact", "frpt", num_classes=3, input_size=SIZE, **overrides),
                       RANDOM_WEIGHTS).eval()


def _synthetic(split):
    return build_dataset("synthetic", split, transform=build_transform(SIZE, train=False), num_classes=10,
                         images_per_class=8)


def test_the_zoom_is_a_square_inside_the_image_centred_on_the_saliency_peak():
    prompt = CropPrompt(1)
    features = torch.full((2, 1, 7, 7), 0.1)
    features[0, 0, 3, 2] = 5.0  # the peak: cell (row 3, column 2), centre (x, y) = (2.5 / 7, 3.5 / 7)
    features[0, 0, 5, 6] = 2.0  # a weaker blob pulls the saliency's mean (the object crop's centre), not the zoom
    features[1, 0, 0, 6] = 5.0  # a peak in the top-right corner cell
    saliency = prompt.saliency(features)
    zoom = prompt.zoom_box(saliency, 0.25)
    assert torch.equal(zoom[:, 2], torch.full((2,), 0.25)) and torch.equal(zoom[:, 3], zoom[:, 2])  # a square
    peak = torch.tensor([2.5 / 7, 3.5 / 7])
    assert zoom[0, :2].tolist() == pytest.approx(peak.tolist(), abs=0.02)  # on the peak (a soft argmax)
    assert (zoom[0, :2] - peak).norm() < 0.2 * (prompt.centre(saliency)[0] - peak).norm()
    assert zoom[1, :2].tolist() == pytest.approx([0.75, 0.25], abs=1e-6)  # the corner's square is kept inside
    assert ((zoom[:, :2] - zoom[:, 2:]) >= 0).all() and ((zoom[:, :2] + zoom[:, 2:]) <= 1).all()


def test_the_zoom_views_embed_the_zoomed_image_and_need_a_half_side():
    model = _model(views=SIX, zoom_half=0.3)
    images = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        maps, prompt = model.view_maps(images)
        zoomed, _ = model.prompt.sample(images, model.prompt.zoom_box(prompt.saliency, 0.3))
        expected = model.backbone(model.normalize(zoomed))
        flipped = model.backbone(model.normalize(zoomed.flip(-1)))
        identity, _ = model.view_maps(images, edit=PromptEdit(identity=True))
    assert list(maps) == SIX.split(",")
    assert torch.allclose(maps["zoom"], expected, atol=1e-5) and torch.allclose(maps["zoom-flip"], flipped, atol=1e-5)
    assert not torch.allclose(maps["zoom"], maps["crop"], atol=1e-3)  # a different view from the object crop
    assert identity["zoom"] is identity["orig"] and identity["zoom-flip"] is identity["flip"]  # no prompt: the image
    with pytest.raises(ConfigError, match="half-side"):
        _model(views=SIX).view_maps(images)


def test_zoom_views_are_a_crop_prompt_option_with_a_half_side_up_to_half_the_image():
    assert model_config("compact", "frpt").zoom_half == 0.0 and "zoom" not in model_config("compact", "frpt").views
    assert model_config("compact", "pt", views=SIX).view_list == ("orig", "flip")  # no prompt, no prompt views
    with pytest.raises(ConfigError, match="crop prompt"):
        model_config("paper", "frpt", views="orig,zoom")
    with pytest.raises(ConfigError, match="Unknown or repeated view"):
        model_config("compact", "frpt", views="orig,zoom,zoom")
    with pytest.raises(ConfigError, match="zoom-half"):
        model_config("compact", "frpt", views=SIX, zoom_half=0.7)


def test_the_feature_cache_keeps_each_zoom_half_apart_and_the_crop_keys_unchanged(tmp_path):
    data = _synthetic("test")
    small, large, plain = _model(views=SIX, zoom_half=0.3), _model(views=SIX, zoom_half=0.35), _model()
    assert cache_key(small, data, "zoom") != cache_key(large, data, "zoom")
    assert cache_key(small, data, "zoom-flip") != cache_key(large, data, "zoom-flip")
    # Crop and original keys do not see the zoom: caches built before the zoom views are reused as they are.
    for view in ("orig", "crop", "crop-flip"):
        assert cache_key(small, data, view) == cache_key(plain, data, view)
    a = cache_split(small, data, ("zoom",), tmp_path, "test", progress=False)
    b = cache_split(large, data, ("zoom",), tmp_path, "test", progress=False)
    assert len(list((tmp_path / "test").glob("zoom-*"))) == 2
    assert not np.array_equal(a.maps["zoom"], b.maps["zoom"])


def _saved(tmp_path, model):
    save_checkpoint(tmp_path, model, classes=["a", "b", "c"], dataset={"name": "synthetic", "root": None},
                    train=None, epoch=1, metrics={})
    return tmp_path


def test_a_checkpoint_with_zoom_views_loads_back_and_embeds_the_same(tmp_path):
    model = _model(views=SIX, zoom_half=0.35)
    loaded, card = load_checkpoint(_saved(tmp_path, model), backbone_weights=RANDOM_WEIGHTS)
    assert loaded.config == model.config and card["model"]["zoom_half"] == 0.35
    images = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(loaded.embed(images), model.embed(images), atol=1e-6)
    card["model"]["zoom_half"] = 0.0  # zoom views without a half-side: refused at load, not at the first query
    card["sealed_sha256"] = card_seal(card)
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="zoom"):
        load_checkpoint(tmp_path, backbone_weights=RANDOM_WEIGHTS)


def test_a_checkpoint_from_before_the_zoom_loads_unchanged(tmp_path):
    model = _model()
    _saved(tmp_path, model)
    card = json.loads((tmp_path / "card.json").read_text())
    del card["model"]["zoom_half"]  # a card written before the field existed
    card["sealed_sha256"] = card_seal(card)
    (tmp_path / "card.json").write_text(json.dumps(card))
    loaded, _ = load_checkpoint(tmp_path, backbone_weights=RANDOM_WEIGHTS)
    assert loaded.config == model.config and loaded.config.view_list == ("orig", "flip", "crop", "crop-flip")
    images = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(loaded.embed(images), model.embed(images))


def test_compact_training_chooses_the_zoom_half_on_validation_and_records_it(tmp_path):
    train_set, test_set = _synthetic("train"), _synthetic("test")
    torch.manual_seed(0)
    model = build_model(model_config("compact", "frpt", num_classes=len(train_set.classes), input_size=SIZE,
                                     views=SIX, whitening=True), RANDOM_WEIGHTS)
    cfg = train_config("compact", epochs=1, prompt_epochs=1, val_fraction=0.4)
    run = dict(classes=list(train_set.classes), dataset_info={"name": "synthetic", "root": None}, progress=False)
    card = train_compact(model, train_set, cfg, tmp_path / "run", test_set=test_set, **run)
    chosen = card["compact"]["zoom_validation"]
    scores = chosen["scores"]
    assert set(scores) == {"none", *map(str, ZOOM_HALVES)}
    criterion = lambda k: scores[k]["recall@1"] + scores[k]["map@r"]  # noqa: E731
    assert criterion(str(chosen["half"])) == max(criterion(str(h)) for h in ZOOM_HALVES)
    assert card["model"]["zoom_half"] == chosen["half"] == model.config.zoom_half
    # Every half-side tried on the validation images is cached apart; the chosen one for both splits.
    assert len(list((tmp_path / "run" / "features" / "val").glob("zoom-flip-*"))) == len(ZOOM_HALVES)
    loaded, _ = load_checkpoint(tmp_path / "run", backbone_weights=RANDOM_WEIGHTS)
    assert loaded.config.zoom_half == chosen["half"] and loaded.config.view_list == tuple(SIX.split(","))
    live = evaluate(loaded, test_set, progress=False)  # card = live: the cached fp16 maps flip a near-tie at most
    assert live["recall@1"] == pytest.approx(card["metrics"]["recall@1"], abs=0.051)
    assert live["map@r"] == pytest.approx(card["metrics"]["map@r"], abs=0.01)
    # --resume with the command's config (half-side not chosen yet) finds the finished run.
    fresh = build_model(model_config("compact", "frpt", num_classes=len(train_set.classes), input_size=SIZE,
                                     views=SIX, whitening=True), RANDOM_WEIGHTS)
    assert train_compact(fresh, train_set, cfg, tmp_path / "run", resume=True, **run)["files"] == card["files"]


def test_train_passes_views_and_a_fixed_zoom_half_to_the_model_and_refuses_zoom_without_the_crop_prompt(tmp_path):
    from frpt.cli import _build_untrained, build_parser, main

    common = ["train", "--dataset", "synthetic", "--out", str(tmp_path / "run"), "--backbone-weights", RANDOM_WEIGHTS,
              "--input-size", str(SIZE), "--views", SIX]
    args = build_parser().parse_args([*common, "--preset", "compact", "--zoom-half", "0.4"])
    config = _build_untrained(args, "compact", "frpt", num_classes=3).config
    assert config.view_list == tuple(SIX.split(",")) and config.zoom_half == 0.4
    assert main([*common, "--preset", "paper", "--quiet"]) == 2  # one line on stderr, no run
    assert not (tmp_path / "run").exists()
