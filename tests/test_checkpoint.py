"""Checkpoint round trip: learned tensors only, identical embeddings after reload, card contents."""
import json

import pytest
import torch
from safetensors.torch import load_file

from frpt.checkpoint import card_seal, load_card, load_checkpoint, save_checkpoint
from frpt.config import model_config, train_config
from frpt.models import RANDOM_WEIGHTS, FRPT, Backbone, build_model


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_round_trip_gives_identical_embeddings(tmp_path, preset):
    torch.manual_seed(0)
    model = build_model(model_config(preset, "frpt", num_classes=3, input_size=64))
    model.train()
    model(torch.rand(4, 3, 64, 64))  # move BNNeck / conv-block running statistics away from their init
    model.eval()
    save_checkpoint(tmp_path, model, classes=["a", "b", "c"], dataset={"name": "synthetic", "root": None},
                    train=train_config(preset), epoch=3, metrics={"recall@1": 0.5})
    loaded, card = load_checkpoint(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, loaded(x).embedding)
    tensors = load_file(str(tmp_path / card["files"]["weights"]))
    assert not any(k.startswith("backbone.") for k in tensors)  # the frozen backbone is rebuilt, not stored
    assert card["preset"] == preset and card["epoch"] == 3 and card["classes"] == ["a", "b", "c"]
    assert card["backbone"]["weights_sha256"] == model.backbone.weights_sha256
    assert card["mean"] == [0.5, 0.5, 0.5] and card["input_size"] == 64


def test_advancing_a_checkpoint_removes_the_files_the_new_card_no_longer_names(tmp_path):
    model = build_model(model_config("paper", "dpp+pt", num_classes=2, input_size=64))
    for epoch in (1, 2):
        save_checkpoint(tmp_path, model, classes=["a", "b"], dataset={}, epoch=epoch,
                        train_state={"momentum.x": torch.zeros(1)})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["card.json", "model-e0002.safetensors", "train-state-e0002.safetensors"]
    assert json.loads((tmp_path / "card.json").read_text())["epoch"] == 2


def test_random_backbone_travels_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = FRPT(model_config("paper", "pt+cah", backbone="resnet18", num_classes=2, input_size=64),
                 Backbone("resnet18", RANDOM_WEIGHTS)).eval()
    save_checkpoint(tmp_path, model, classes=["a", "b"], dataset={})
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, loaded(x).embedding)


def test_finetune_checkpoint_stores_the_backbone(tmp_path):
    torch.manual_seed(0)
    model = build_model(model_config("paper", "finetune", num_classes=2, input_size=64))
    with torch.no_grad():
        next(model.backbone.parameters()).add_(1.0)  # diverge from the packaged weights
    save_checkpoint(tmp_path, model.eval(), classes=["a", "b"], dataset={})
    loaded, card = load_checkpoint(tmp_path)
    assert any(k.startswith("backbone.") for k in load_file(str(tmp_path / card["files"]["weights"])))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, loaded(x).embedding)
    assert load_card(tmp_path)["variant"] == "finetune"


def test_bounded_saliency_travels_with_the_checkpoint_and_a_negative_bound_is_refused(tmp_path):
    from frpt.errors import CheckpointError
    torch.manual_seed(0)
    model = build_model(model_config("paper", "frpt", num_classes=2, input_size=64, saliency_bound=2.0)).eval()
    with torch.no_grad():
        model.prompt.conv.weight.normal_(0, 1.0)  # a trained-looking, far from uniform saliency
    save_checkpoint(tmp_path, model, classes=["a", "b"], dataset={}, epoch=1)
    loaded, card = load_checkpoint(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert card["model"]["saliency_bound"] == 2.0 and loaded.config.saliency_bound == 2.0
    with torch.no_grad():
        assert torch.equal(model.run_prompt(x).saliency, loaded.run_prompt(x).saliency)
    card_path = tmp_path / "card.json"
    edited = json.loads(card_path.read_text())
    edited["model"]["saliency_bound"] = -2.0
    edited["sealed_sha256"] = card_seal(edited)  # re-sealed, so the field check itself must refuse it
    card_path.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match="saliency_bound"):
        load_checkpoint(tmp_path)


def test_saving_clears_temp_files_of_a_killed_writer_and_writes_none_of_its_own(tmp_path):
    """A SIGKILL mid-save leaves our ``.<name>.<random>.tmp`` or, from safetensors' own save_file, ``.tmpXXXXXX``;
    the next save removes both, and a save itself leaves nothing but the card and its tensor file."""
    for name in (".card.json.k2j3.tmp", ".tmp0YAUY8", "notes.txt"):
        (tmp_path / name).write_text("x")
    model = build_model(model_config("paper", "dpp+pt", num_classes=2, input_size=64))
    save_checkpoint(tmp_path, model, classes=["a", "b"], dataset={}, epoch=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "model-e0001.safetensors", "notes.txt"]


def test_a_half_precision_export_is_half_the_size_and_retrieves_as_the_original(tmp_path):
    """`frpt export --half` (how cub/compact-frpt-lite1 fits the 5 MB of a shipped checkpoint): the weights file
    stores float16, the card says so, and the reloaded model's embeddings are the fp32 ones to float16 rounding."""
    from frpt.checkpoint import export_checkpoint
    from frpt.demo import demo_checkpoint_dir

    src = demo_checkpoint_dir("frpt")  # the demo's whitened compact head: a 1280 x 1280 matrix among its weights
    card = load_checkpoint(src)[1]
    export_checkpoint(src, tmp_path / "half", half=True)
    half_model, half_card = load_checkpoint(tmp_path / "half")
    model = load_checkpoint(src)[0]
    stored = load_file(str(tmp_path / "half" / half_card["files"]["weights"]))
    assert half_card["files"]["weights_dtype"] == "float16" and "weights_dtype" not in card["files"]
    assert {t.dtype for t in stored.values()} == {torch.float16}
    full = (src / card["files"]["weights"]).stat().st_size
    assert (tmp_path / "half" / half_card["files"]["weights"]).stat().st_size < 0.51 * full
    assert all(p.dtype == torch.float32 for p in half_model.parameters())  # computed in fp32 as before
    torch.manual_seed(0)
    x = torch.rand(8, 3, card["input_size"], card["input_size"])
    with torch.no_grad():
        a, b = model(x).embedding, half_model(x).embedding
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert cosine.min() > 0.9999 and not torch.equal(a, b)  # rounded, not copied
    assert half_card["metrics"] == card["metrics"]  # the fp32 figures: re-evaluate an export (bench/RESULTS.md)
