"""FRPT model: packaged backbone weights, parameter counts per preset, frozen backbone, gradient flow."""
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from frpt.config import model_config
from frpt.errors import ConfigError
from frpt.models import RANDOM_WEIGHTS, Backbone, build_model, load_weights, offline_weights_path


def _imagenet_input(image: np.ndarray, arch: str) -> torch.Tensor:
    """Whole photo resized to ``arch``'s input size (no crop: chelsea's centre crop is ambiguous between cat
    classes 282/285), normalised with the mean/std from timm's data config."""
    from PIL import Image
    cfg = timm.data.resolve_model_data_config(timm.create_model(arch))
    size = cfg["input_size"][-1]
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
@pytest.mark.parametrize("name, expected", [("chelsea", 285), ("coffee", 967)])
def test_packaged_weights_load_by_position_and_classify_real_photos(backbone, name, expected):
    """The three packages of requirements.txt: top-1 285 Egyptian cat and 967 espresso at each one's own size
    (measured: 0.69-0.87 probability, the runner-up below 0.07), which random or misaligned tensors never give."""
    from skimage import data
    path = offline_weights_path(backbone)
    assert path is not None, f"{backbone}'s weights package is a declared dependency (requirements.txt)"
    arch = f"tf_{backbone}"
    model = timm.create_model(arch, pretrained=False).eval()
    load_weights(model, backbone, path)
    with torch.no_grad():
        logits = model(_imagenet_input(getattr(data, name)(), arch))
    assert int(logits.argmax()) == expected


def test_backbone_without_packaged_weights_needs_a_file(tmp_path):
    with pytest.raises(ConfigError, match="--backbone-weights"):
        Backbone("resnet18")
    with pytest.raises(ConfigError, match="does not exist"):
        Backbone("resnet18", tmp_path / "missing.pth")


def test_foreign_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ConfigError, match="do not fit"):
        Backbone("efficientnet_lite0", path)


def test_local_weights_file_loads_by_name(tmp_path):
    reference = timm.create_model("resnet18", num_classes=0, global_pool="")
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict() | {k: v for k, v in reference.state_dict().items()}, path)
    backbone = Backbone("resnet18", path)
    for key, value in reference.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[key], value)
    assert backbone.weights_sha256 and len(backbone.weights_sha256) == 64


def _learned(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_learned_parameter_counts_match_their_formula(backbone):
    weights = None if backbone == "efficientnet_lite0" else RANDOM_WEIGHTS
    n = 100
    bb = Backbone(backbone, weights)
    c = bb.num_features
    c4, c16 = bb.stage_channels(4), bb.stage_channels(16)
    # paper: 31x31xC_S kernel (no bias), SE r=8 without bias, linear classifier with bias.
    paper = {
        "frpt": 31 * 31 * c4 + 2 * c * (c // 8) + c * n + n,
        "dpp+pt": 31 * 31 * c4 + c * n + n,
        "pt+cah": 2 * c * (c // 8) + c * n + n,
        "no-in": 31 * 31 * c4 + 2 * c * (c // 8) + c * n + n,
        "pt": 0,
    }
    # official: 1x1 conv with bias on stride 16; SE r=1; conv block 1x1 C->C/2 + BN, 3x3 C/2->C + BN;
    # BNNeck weight (bias frozen); bias-free classifier.
    block = c * (c // 2) + 2 * (c // 2) + 9 * (c // 2) * c + 2 * c
    official = {
        "frpt": (c16 + 1) + 2 * c * c + block + c + c * n,
        "dpp+pt": (c16 + 1) + c + c * n,
        "pt+cah": 2 * c * c + block + c + c * n,
        "pt": 0,
    }
    for preset, table in (("paper", paper), ("official", official)):
        for variant, expected in table.items():
            model = build_model(model_config(preset, variant, backbone=backbone, num_classes=n), weights)
            assert _learned(model) == expected, (preset, variant)
            assert model.parameter_report()["total"]["learned"] == expected
    finetune = build_model(model_config("paper", "finetune", backbone=backbone, num_classes=n), weights)
    assert _learned(finetune) == sum(p.numel() for p in bb.parameters()) + c * n + n


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_frozen_backbone_gets_no_gradient_while_the_dpp_does(preset):
    torch.manual_seed(0)
    model = build_model(model_config(preset, "frpt", num_classes=5, input_size=96))
    model.train()
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats_before = bn.running_mean.clone()
    out = model(torch.rand(4, 3, 96, 96))
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.prompt.conv.weight.grad is not None and model.prompt.conv.weight.grad.abs().sum() > 0
    assert not model.backbone.training
    assert torch.equal(bn.running_mean, stats_before)  # BatchNorm statistics never move


def test_finetune_trains_the_backbone_and_has_no_prompt_or_head():
    model = build_model(model_config("paper", "finetune", num_classes=3, input_size=64))
    model.train()
    assert model.prompt is None and model.cah is None and model.backbone.training
    out = model(torch.rand(2, 3, 64, 64))
    out.logits.sum().backward()
    assert any(p.grad is not None for p in model.backbone.parameters())


def test_pt_embedding_is_the_backbones_pooled_features():
    model = build_model(model_config("paper", "pt", input_size=64)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone(model.normalize(x)).mean((2, 3))
        out = model(x)
    assert out.logits is None and out.prompt is None
    assert torch.allclose(out.embedding, expected, atol=1e-5)
    assert torch.allclose(out.pre_head, out.embedding)


def test_cah_keeps_gated_channels_and_instance_normalises_the_rest():
    from frpt.models import CategoryAwarenessHead
    head = CategoryAwarenessHead(8, reduction=2)
    m = torch.randn(2, 8, 5, 5) * 3 + 1
    w = head.channel_weights(m)
    inorm = (m - m.mean((2, 3), keepdim=True)) / torch.sqrt(m.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(head(m), w * m + (1 - w) * inorm, atol=1e-5)  # Eq. 9
    no_in = CategoryAwarenessHead(8, reduction=2, instance_norm=False)
    no_in.load_state_dict(head.state_dict())
    assert torch.allclose(no_in(m), w * m, atol=1e-6)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_the_instance_norm_branch_reaches_the_embedding_only_through_the_official_head(preset):
    """Parameter-free IN has zero spatial mean, so under the paper's GAP the (1 - W_C) * IN(M) term of Eq. 9
    pools to exactly 0: paper-preset FRPT and its "without IN" row embed identically (and get identical
    gradients). The released code's conv block + GeM make the IN branch count. bench/RESULTS.md discusses it."""
    torch.manual_seed(0)
    with_in = build_model(model_config(preset, "frpt", num_classes=3, input_size=64)).eval()
    without_in = build_model(model_config(preset, "no-in", num_classes=3, input_size=64)).eval()
    without_in.load_state_dict(with_in.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = with_in(x).embedding, without_in(x).embedding
    if preset == "paper":
        assert torch.allclose(a, b, atol=1e-5)
    else:
        assert (a - b).abs().max() > 1e-2


def test_dpp_outputs_for_the_app():
    model = build_model(model_config("paper", "frpt", num_classes=3, input_size=96)).eval()
    with torch.no_grad():
        untrained = model.run_prompt(torch.rand(1, 3, 96, 96))
        assert torch.allclose(untrained.saliency, torch.full_like(untrained.saliency, 1 / 961))  # zero init
        torch.nn.init.normal_(model.prompt.conv.weight, std=1e-3)
        out = model(torch.rand(2, 3, 96, 96))
        sharper = model.run_prompt(torch.rand(2, 3, 96, 96), temperature=0.1)
    p = out.prompt
    assert p.warped.shape == (2, 3, 96, 96) and p.grid.shape == (2, 96, 96, 2)
    assert p.saliency.shape == (2, 1, 31, 31)
    assert torch.allclose(p.saliency.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    assert out.pre_head.shape == out.embedding.shape == (2, 1280)
    assert sharper.saliency.max() > p.saliency.max()


def test_parameter_report_does_not_depend_on_requires_grad_flags():
    model = build_model(model_config("official", "frpt", num_classes=7, input_size=64))
    before = model.parameter_report()
    assert before["total"]["learned"] == _learned(model)
    model.requires_grad_(False)  # the app freezes everything for inference
    assert model.parameter_report() == before
