"""The compact preset: its crop prompt, the feature cache it trains on, and the recipe end to end (synthetic)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frpt.checkpoint import load_checkpoint
from frpt.compact import embed_cached, train_compact, validation_split
from frpt.config import model_config, train_config
from frpt.data import build_dataset, build_transform
from frpt.errors import CheckpointError
from frpt.engine import native_bf16, resolve_precision
from frpt.evaluation import evaluate
from frpt.feature_cache import cache_split
from frpt.models import RANDOM_WEIGHTS, build_model
from frpt.models.crop import CropPrompt

SIZE = 64
SYNTHETIC = dict(num_classes=10, images_per_class=8)


def _synthetic(split):
    return build_dataset("synthetic", split, transform=build_transform(SIZE, train=False), **SYNTHETIC)


def test_uniform_saliency_crops_the_whole_image_so_the_prompt_starts_as_the_identity():
    prompt = CropPrompt(8)
    image = torch.rand(2, 3, 32, 32)
    out = prompt(image, torch.ones(2, 8, 4, 4))
    assert torch.allclose(prompt.box(out.saliency), torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 2), atol=1e-6)
    assert torch.allclose(out.warped, image, atol=1e-5)


def test_peaked_saliency_zooms_into_a_box_inside_the_image():
    prompt = CropPrompt(1, min_half=0.2)
    features = torch.zeros(1, 1, 7, 7)
    features[0, 0, 1, 5] = 50.0  # mass in row 1 (y ~ 0.21), column 5 (x ~ 0.79)
    saliency = prompt.saliency(features)
    cx, cy, hx, hy = prompt.box(saliency)[0].tolist()
    assert hx == pytest.approx(0.2) and hy == pytest.approx(0.2)  # a point mass: the tightest allowed box
    assert cx == pytest.approx(0.7857, abs=1e-3) and cy == pytest.approx(0.2143, abs=1e-3)
    grid = prompt.grid(prompt.box(saliency), (32, 32))
    # The output's corners read the box's corners ([-1, 1] units, align_corners=False: half a pixel inside).
    assert grid[0, 0, 0].tolist() == pytest.approx([2 * (cx - hx) - 1 + 2 * hx / 32, 2 * (cy - hy) - 1 + 2 * hy / 32], abs=1e-5)
    image = torch.zeros(1, 1, 32, 32)
    image[..., :16, 16:] = 1.0  # top-right quadrant white
    assert F.grid_sample(image, grid, align_corners=False).mean() > 0.9


def test_box_is_clamped_inside_the_image_and_the_crop_is_differentiable_in_the_saliency_weights():
    prompt = CropPrompt(4)
    features = torch.rand(3, 4, 7, 7, requires_grad=False)
    features[:, :, 0, 0] += 20  # push the box to the corner: the clamp must keep it inside
    out = prompt(torch.rand(3, 3, 32, 32), features)
    box = prompt.box(out.saliency)
    assert ((box[:, 0] - box[:, 2]) >= -1e-6).all() and ((box[:, 0] + box[:, 2]) <= 1 + 1e-6).all()
    # Away from the clamps the crop moves with the saliency weights, so class labels can train it end to end.
    features = 0.05 * torch.rand(3, 4, 7, 7)
    features[:, 0, 1:5, 1:4] += torch.rand(3, 4, 3)  # a blob: its box is inside the clamps
    image = torch.rand(3, 3, 32, 32)
    (prompt(image, features).warped * torch.rand_like(image)).sum().backward()
    assert prompt.conv.weight.grad is not None and prompt.conv.weight.grad.abs().sum() > 0


def test_the_crop_is_the_same_under_bf16_autocast_as_in_fp32():
    """The feature cache runs the model under bf16 autocast, a compiled engine's queries run the prompt in fp32:
    both must embed the same crop. A bf16 box and sampling grid (8 mantissa bits) jitter the crop's sample points
    by up to a pixel; computed in fp32 whatever the autocast, the crop matches to float rounding."""
    torch.manual_seed(0)
    prompt = CropPrompt(16)
    features = 0.05 * torch.rand(4, 16, 9, 9)
    features[:, :, 2:6, 3:8] += torch.rand(4, 16, 4, 5)  # an off-centre blob: a box inside the clamps
    image = torch.rand(4, 3, 288, 288)
    exact = prompt(image, features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = prompt(image, features)
    assert auto.warped.dtype == torch.float32 and auto.grid.dtype == torch.float32
    assert (prompt.box(auto.saliency) - prompt.box(exact.saliency)).abs().max() < 1e-6
    assert (auto.warped - exact.warped).abs().max() < 1e-5


def test_validation_split_holds_out_whole_training_classes():
    labels = np.repeat(np.arange(10), 5)
    fit, val = validation_split(labels, 0.2)
    assert set(labels[val]) == {8, 9} and set(labels[fit]) == set(range(8))
    assert len(fit) + len(val) == len(labels)
    with pytest.raises(CheckpointError, match="val-fraction"):
        validation_split(labels, 0.9)


def test_feature_cache_matches_the_model_and_resumes_chunk_by_chunk(tmp_path, monkeypatch):
    import frpt.feature_cache as fc

    monkeypatch.setattr(fc, "CHUNK", 16)
    torch.manual_seed(0)
    model = build_model(model_config("compact", "frpt", num_classes=5, input_size=SIZE))
    data = _synthetic("test")  # 40 images: chunks of 16, 16 and 8
    views = model.config.view_list
    cached = cache_split(model, data, views, tmp_path, "test", progress=False)
    assert set(cached.maps) == set(views) and cached.maps["orig"].dtype == np.float16
    images = torch.stack([data[i][0] for i in range(4)])
    with torch.no_grad():
        live = model.eval()(images).embedding
        maps, _ = model.view_maps(images)
    assert np.allclose(cached.maps["crop"][:4], maps["crop"].numpy(), atol=2e-2, rtol=1e-2)
    assert torch.allclose(embed_cached(model, cached.maps, np.arange(4)), live, atol=2e-3)

    # A kill after some chunks: only the missing chunk is computed again.
    chunk = next((tmp_path / "test").glob("crop-*")) / "chunk-000016.npy"
    chunk.unlink()
    calls = []
    original = model.view_maps
    monkeypatch.setattr(model, "view_maps", lambda x: calls.append(len(x)) or original(x))
    again = cache_split(model, data, views, tmp_path, "test", progress=False)
    assert sum(calls) == 16 and np.array_equal(again.maps["crop"], cached.maps["crop"])

    other = build_model(model_config("compact", "frpt", num_classes=5, input_size=SIZE + 32))
    with pytest.raises(CheckpointError, match="another backbone, input size"):
        cache_split(other, _synthetic("test"), ("orig",), tmp_path, "test", progress=False)


@pytest.mark.slow
def test_compact_training_writes_a_checkpoint_whose_live_embedding_matches_its_cached_metrics(tmp_path):
    train_set, test_set = _synthetic("train"), _synthetic("test")
    torch.manual_seed(0)
    model = build_model(model_config("compact", "frpt", num_classes=len(train_set.classes), input_size=SIZE))
    cfg = train_config("compact", epochs=3, prompt_epochs=2, val_fraction=0.4)
    card = train_compact(model, train_set, cfg, tmp_path / "run", classes=list(train_set.classes),
                         dataset_info={"name": "synthetic", "root": None}, test_set=test_set, progress=False)
    report = card["compact"]
    assert report["val_classes"] == 2 and report["prompt_kept"] in ("trained", "untrained")
    assert [r["epoch"] for r in report["head_validation"]] == [0, 1, 2, 3]
    assert 0 <= report["head_epochs"] <= 3
    loaded, _ = load_checkpoint(tmp_path / "run")
    live = evaluate(loaded, test_set, progress=False)
    # The cache holds fp16 maps: a near-tie may flip, nothing more (40 queries, 1/40 = 0.025 each).
    assert live["recall@1"] == pytest.approx(card["metrics"]["recall@1"], abs=0.051)
    assert live["map@r"] == pytest.approx(card["metrics"]["map@r"], abs=0.01)
    # The cached test embeddings became the checkpoint's gallery: what the app reads matches the live model.
    from frpt.evaluation import extract_embeddings
    from frpt.gallery import gallery_file, load_gallery
    stored = load_gallery(gallery_file(card, test_set, None))
    fresh = extract_embeddings(loaded, test_set, progress=False)
    cos = lambda a, b: (F.normalize(torch.as_tensor(np.asarray(a)), dim=1) * F.normalize(torch.as_tensor(b), dim=1)).sum(1)  # noqa: E731
    assert stored.ids == [s for s, _ in test_set.samples]
    assert cos(stored.embeddings.after, fresh.after).min() > 0.999
    assert cos(stored.embeddings.before, fresh.before).min() > 0.999
    # Done means done: --resume returns the card, a second run without it is refused.
    assert train_compact(model, train_set, cfg, tmp_path / "run", classes=list(train_set.classes),
                         dataset_info={}, resume=True, progress=False)["files"] == card["files"]
    with pytest.raises(CheckpointError, match="--resume"):
        train_compact(model, train_set, cfg, tmp_path / "run", classes=list(train_set.classes), dataset_info={},
                      progress=False)


@pytest.mark.parametrize("field, value", [("prompt", "zoom"), ("views", "orig,upside-down"), ("crop_min_half", 0.7)])
def test_a_card_with_an_unknown_prompt_view_or_crop_limit_is_refused(tmp_path, field, value):
    from frpt.checkpoint import card_seal, save_checkpoint

    model = build_model(model_config("compact", "frpt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS)
    save_checkpoint(tmp_path, model, classes=["a", "b", "c"], dataset={"name": "synthetic", "root": None},
                    train=None, epoch=1, metrics={})
    card = json.loads((tmp_path / "card.json").read_text())
    card["model"][field] = value
    card["sealed_sha256"] = card_seal(card)
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="prompt|views|crop|invalid"):
        load_checkpoint(tmp_path, backbone_weights=RANDOM_WEIGHTS)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it_natively():
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    assert native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"



def test_box_supervision_moves_the_crop_onto_the_marker(tmp_path):
    """The named departure (--prompt-supervision boxes): fitted to the training markers' boxes, the crop zooms in and
    its centre lands nearer the unseen test classes' markers than the untrained crop's (the whole image)."""
    from frpt.compact import box_targets, train_prompt

    size = 128  # a 4 x 4 final map: the smallest on which a crop can be placed at all
    data = dict(num_classes=10, images_per_class=24)
    train = build_dataset("synthetic", "train", transform=build_transform(size, train=False), **data)
    test = build_dataset("synthetic", "test", transform=build_transform(size, train=False), **data)
    torch.manual_seed(0)
    model = build_model(model_config("compact", "dpp+pt", num_classes=5, input_size=size)).eval()
    cached = cache_split(model, train, ("orig", "flip"), tmp_path, "train", batch_size=40, progress=False)
    fit = np.arange(len(train))
    test_maps = cache_split(model, test, ("orig",), tmp_path, "test", batch_size=40, progress=False)
    target = box_targets(test, np.arange(len(test)), size)[:, :2]

    def crop_boxes() -> torch.Tensor:
        with torch.no_grad():
            return model.prompt.box(model.prompt.saliency(torch.from_numpy(
                np.asarray(test_maps.maps["orig"], dtype=np.float32))))

    before = crop_boxes()
    cfg = train_config("compact", prompt_supervision="boxes", prompt_epochs=15)
    losses = train_prompt(model, cached, fit, cfg, boxes=box_targets(train, fit, size), progress=False)
    assert losses[-1] < losses[0]
    after = crop_boxes()
    error = lambda b: float((b[:, :2] - target).norm(dim=1).mean())  # noqa: E731
    # measured on this small set at 128 px: centre 0.131 -> 0.079 of the image side off, half-side 0.5 -> about 0.3
    assert error(after) < 0.8 * error(before), (error(before), error(after))
    assert float(after[:, 2:].mean()) < 0.8 * float(before[:, 2:].mean())  # a tighter box: it zooms


def test_box_supervision_on_a_dataset_without_boxes_says_so():
    from frpt.compact import box_targets
    from frpt.data.base import RetrievalDataset

    plain = RetrievalDataset("folder", "train", ["a"], [("x.png", 0)], None, None, None)
    with pytest.raises(CheckpointError, match="needs a dataset with boxes"):
        box_targets(plain, np.arange(1), 64)
    with pytest.raises(Exception, match="Unknown prompt supervision"):
        train_config("compact", prompt_supervision="parts")


def test_within_class_whitening_fitted_on_training_classes_lifts_retrieval_of_unseen_classes():
    """The compact preset's whitening option: variation every species shares (a nuisance subspace, like pose or
    light) swamps the class means under cosine; fitted on training classes, the whitening damps it for new ones."""
    from frpt.metrics import map_at_r, recall_at_k
    from frpt.models.head import WithinClassWhitening

    g = torch.Generator().manual_seed(0)
    dim = 32
    nuisance = torch.randn(dim, 4, generator=g)

    def draw(classes: int, per_class: int = 10):
        means = 1.0 + 0.3 * torch.randn(classes, dim, generator=g)
        x = means.repeat_interleave(per_class, 0) + 0.6 * torch.randn(classes * per_class, 4, generator=g) @ nuisance.T
        return x + 0.05 * torch.randn(classes * per_class, dim, generator=g), torch.arange(classes).repeat_interleave(per_class)

    (x_train, y_train), (x_test, y_test) = draw(20), draw(20)  # the test classes have other means
    whitening = WithinClassWhitening(dim)
    assert torch.allclose(whitening(x_test), F.normalize(x_test, dim=1))  # unfitted: the identity on unit vectors
    before = recall_at_k(x_test, y_test, (1,))["recall@1"]
    whitening.fit(x_train, y_train, shrink=0.1)
    after = recall_at_k(whitening(x_test), y_test, (1,))["recall@1"]
    assert before < 0.4 and after > 0.9, (before, after)  # measured: 0.19 -> 0.995
    assert map_at_r(whitening(x_test), y_test) > 3 * map_at_r(x_test, y_test)
    # Full shrinkage leaves centring and a uniform scale: the gain above is the whitening, not the centring.
    whitening.fit(x_train, y_train, shrink=1.0)
    assert recall_at_k(whitening(x_test), y_test, (1,))["recall@1"] < after - 0.5
    whitening.reset()
    assert torch.allclose(whitening(x_test), F.normalize(x_test, dim=1))
    with pytest.raises(ValueError, match="shrink"):
        whitening.fit(x_train, y_train, shrink=0.0)


def test_whitening_is_a_compact_option_only():
    from frpt.errors import ConfigError

    assert not model_config("compact", "frpt").whitening
    with pytest.raises(ConfigError, match="--whitening"):
        model_config("paper", "frpt", whitening=True)
    with pytest.raises(ConfigError, match="--whitening"):
        model_config("compact", "finetune", whitening=True)


@pytest.mark.slow
def test_compact_training_with_whitening_chooses_it_on_validation_and_the_checkpoint_embeds_with_it(tmp_path):
    train_set, test_set = _synthetic("train"), _synthetic("test")
    torch.manual_seed(0)
    model = build_model(model_config("compact", "frpt", num_classes=len(train_set.classes), input_size=SIZE,
                                     whitening=True))
    cfg = train_config("compact", epochs=2, prompt_epochs=1, val_fraction=0.4)
    card = train_compact(model, train_set, cfg, tmp_path / "run", classes=list(train_set.classes),
                         dataset_info={"name": "synthetic", "root": None}, test_set=test_set, progress=False)
    report = card["compact"]
    from frpt.compact import WHITENING_SHRINKS

    scores = report["whitening_validation"]["scores"]
    assert set(scores) == {"none", *map(str, WHITENING_SHRINKS)}
    shrink = report["whitening_shrink"]
    criterion = lambda k: scores[k]["recall@1"] + scores[k]["map@r"]  # noqa: E731
    assert criterion("none" if shrink is None else str(shrink)) == max(map(criterion, scores))
    loaded, _ = load_checkpoint(tmp_path / "run")
    fitted = loaded.head.whitening
    identity = torch.allclose(fitted.matrix, torch.eye(len(fitted.mean))) and not fitted.mean.any()
    assert identity == (shrink is None)  # the fitted whitening is stored with the checkpoint and loaded back
    live = evaluate(loaded, test_set, progress=False)
    assert live["recall@1"] == pytest.approx(card["metrics"]["recall@1"], abs=0.051)
    assert live["map@r"] == pytest.approx(card["metrics"]["map@r"], abs=0.01)
