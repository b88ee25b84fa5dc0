"""A short real training on the built-in synthetic set improves retrieval on unseen classes."""
import pytest
import torch

from frpt.config import model_config, train_config
from frpt.data import build_dataset, build_transform
from frpt.models import build_model
from frpt.training import read_log, train

SIZE = 64
SYNTHETIC = dict(num_classes=8, images_per_class=16)  # 4 train / 4 test classes


@pytest.mark.slow
def test_short_paper_training_logs_learns_the_dpp_and_leaves_the_backbone_untouched(tmp_path):
    train_set = build_dataset("synthetic", "train", transform=build_transform(SIZE, train=True), **SYNTHETIC)
    test_set = build_dataset("synthetic", "test", transform=build_transform(SIZE, train=False), **SYNTHETIC)
    torch.manual_seed(0)
    model = build_model(model_config("paper", "frpt", num_classes=len(train_set.classes), input_size=SIZE))
    prompt_before = model.prompt.conv.weight.detach().clone()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    # The demo's recipe (frpt/demo.py): the DPP at 2e-4 x lr, stopped before its saliency collapses.
    cfg = train_config("paper", epochs=4, lr=0.05, batch_size=16, eval_every=2, prompt_lr_scale=2e-4)
    train(model, train_set, cfg, tmp_path, classes=list(train_set.classes), dataset_info={"name": "synthetic"},
          test_set=test_set, progress=False)

    # No retrieval assertion: on 64 queries R@1 moves by 1/64 per query, float rounding differs between CPUs
    # (AVX2 vs AVX-512), and this published DPP sharpens towards collapse within these 4 epochs (max saliency cell
    # 0.2-0.98 of the mass), so "beats the untrained model" was inside the noise. The recipe that does improve
    # retrieval (compact) is tested against its frozen baseline, with a margin, on real CUB in test_assets.py.
    log = read_log(tmp_path)
    assert [int(r["epoch"]) for r in log] == list(range(1, 5))
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert log[1]["recall@1"] != "" and log[0]["recall@1"] == ""  # evaluated every 2 epochs
    assert not torch.equal(model.prompt.conv.weight, prompt_before)  # the DPP learned
    for key, value in model.backbone.state_dict().items():  # weights and BN statistics of the frozen backbone
        assert torch.equal(value, backbone_before[key]), key


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_gradient_checkpointing_trains_the_same_weights_and_is_recorded(tmp_path, preset):
    """`--grad-checkpointing` (what lets the official preset's batch of 256 at 224 px fit a CPU's memory,
    bench/RESULTS.md) recomputes the frozen backbone's activations instead of keeping them: the same gradients
    reach the DPP and the head, so two steps give the same learned weights as without it (to float rounding of
    the recomputation), the card says it ran, and the backbone is left as it was."""
    train_set = build_dataset("synthetic", "train", transform=build_transform(SIZE, train=True), **SYNTHETIC)
    learned = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(model_config(preset, "frpt", num_classes=len(train_set.classes), input_size=SIZE))
        initial = {k: v.clone() for k, v in model.learned_state_dict().items() if k.startswith("prompt.")}
        cfg = train_config(preset, epochs=1, lr=0.05, batch_size=16)
        card = train(model, train_set, cfg, tmp_path / str(checkpointing), classes=list(train_set.classes),
                     dataset_info={"name": "synthetic"}, progress=False, limit_batches=2,
                     grad_checkpointing=checkpointing)
        assert card["grad_checkpointing"] is checkpointing
        assert not model.backbone.model.grad_checkpointing  # switched off again after training
        learned[checkpointing] = model.learned_state_dict()
        # the DPP learned through the backbone (checkpointing must not cut that path)
        assert any(not torch.equal(learned[checkpointing][k], v) for k, v in initial.items())
    for key, value in learned[False].items():
        assert torch.allclose(learned[True][key], value, rtol=1e-4, atol=1e-6), key
