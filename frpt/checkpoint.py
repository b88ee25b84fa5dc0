"""Checkpoints: a folder with the learned tensors as safetensors and a JSON card. Loading never unpickles.

Layout (``FORMAT_VERSION`` 1)::

    card.json                      preset, variant, model/train config, backbone name + weights sha256,
                                   class names, input size, mean/std, metrics, epoch, file names + sha256
    model-e0007.safetensors        learned tensors only (the frozen backbone is rebuilt from its weights)
    train-state-e0007.safetensors  optimiser state for --resume (training checkpoints only)
    log.csv                        per-epoch training log (written by frpt.training)

The card is written last, atomically, and names the tensor files by epoch, so it is the commit point: a run
killed at any moment leaves either the previous complete checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ModelConfig, TrainConfig, from_dict
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write, atomic_write_text, remove_stale_temps
from .models import RANDOM_WEIGHTS, FRPT, Backbone, file_sha256
from .models.backbone import timm_name

FORMAT = "frpt-checkpoint"
FORMAT_VERSION = 1
CARD = "card.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp))
    return file_sha256(path)


def save_checkpoint(folder: str | os.PathLike, model: FRPT, *, classes: list[str], dataset: dict[str, Any],
                    train: TrainConfig | None = None, epoch: int = 0, metrics: dict[str, Any] | None = None,
                    train_state: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write (or advance) the checkpoint in ``folder``; returns the card path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    previous = _read_json(folder / CARD) if (folder / CARD).is_file() else None
    tensors = model.learned_state_dict()
    if model.backbone.weights_sha256 is None and not model.config.finetune:
        # A randomly initialised backbone cannot be rebuilt from a weights file, so it travels with the checkpoint.
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    files: dict[str, Any] = {"weights": f"model-e{epoch:04d}.safetensors"}
    files["weights_sha256"] = _save_tensors(folder / files["weights"], tensors)
    if train_state is not None:
        files["train_state"] = f"train-state-e{epoch:04d}.safetensors"
        files["train_state_sha256"] = _save_tensors(folder / files["train_state"], train_state)
    bb = model.backbone
    card = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
        "preset": model.config.preset, "variant": model.config.variant,
        "model": asdict(model.config), "train": asdict(train) if train is not None else None,
        "backbone": {"name": bb.name, "timm_name": timm_name(bb.name), "weights_sha256": bb.weights_sha256,
                     "weights_file": Path(bb.weights_path).name if bb.weights_path else None},
        "dataset": dataset, "classes": list(classes),
        "input_size": model.config.input_size, "mean": list(bb.mean), "std": list(bb.std),
        "epoch": epoch, "metrics": metrics or {}, "files": files,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_write_text(folder / CARD, json.dumps(card, indent=2))
    if previous is not None:  # the new card is committed; the files it no longer names can go
        keep = {files.get("weights"), files.get("train_state")}
        for key in ("weights", "train_state"):
            old = previous.get("files", {}).get(key)
            if old and old not in keep:
                (folder / old).unlink(missing_ok=True)
    return folder / CARD


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON card ({type(exc).__name__}); "
                              "the checkpoint is damaged, re-export or retrain it.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not an FRPT checkpoint card; re-export or retrain the checkpoint.")
    return data


def _resolve_folder(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
        raise CheckpointError(f"{p.name} is a pickle file, which FRPT never loads because unpickling can run code; "
                              "use a checkpoint folder with card.json and .safetensors files.")
    if p.is_file() and p.name == CARD:
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"Checkpoint {p} does not exist; pass a folder written by `python -m frpt train`.")
    if not p.is_dir():
        raise CheckpointError(f"{p.name} is not a checkpoint folder; pass the folder holding card.json.")
    if not (p / CARD).is_file():
        raise CheckpointError(f"Checkpoint folder {p} has no card.json; it is incomplete or not an FRPT checkpoint.")
    return p


def load_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's card (format, version, required fields)."""
    folder = _resolve_folder(path)
    card = _read_json(folder / CARD)
    if card.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CARD} is not an FRPT checkpoint card (format {card.get('format')!r}).")
    version = card.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint {folder} uses format version {version!r}, newer than this library "
                              f"supports ({FORMAT_VERSION}); upgrade frpt to load it.")
    required = ("model", "backbone", "classes", "files", "input_size", "mean", "std")
    missing = [k for k in required if k not in card]
    if missing or not isinstance(card.get("files"), dict) or "weights" not in card["files"]:
        raise CheckpointError(f"Checkpoint card {folder / CARD} lacks {missing or ['files.weights']}; "
                              "it is garbled, retrain or re-export the checkpoint.")
    card["path"] = str(folder)
    return card


def verified_file(folder: Path, card: dict[str, Any], key: str) -> Path:
    name = card["files"].get(key)
    if not isinstance(name, str) or Path(name).name != name:
        raise CheckpointError(f"Checkpoint card in {folder} names an invalid {key} file {name!r}.")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {folder} is missing {name}; the folder is incomplete, retrain or re-copy it.")
    expected = card["files"].get(f"{key}_sha256")
    if expected and file_sha256(path) != expected:
        raise CheckpointError(f"{name} in {folder} does not match the sha256 its card records; "
                              "the file was modified or damaged, re-copy the checkpoint.")
    return path


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path.name} is not a valid safetensors file ({exc}); re-copy the checkpoint.") from None


def load_checkpoint(path: str | os.PathLike, *, backbone_weights: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> tuple[FRPT, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, in eval mode: ``(model, card)``."""
    card = load_card(path)
    folder = Path(card["path"])
    try:
        config = from_dict(ModelConfig, card["model"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"Checkpoint {folder} has an unusable model config ({exc}).") from None
    if config.num_classes != len(card["classes"]) and config.trainable:
        raise CheckpointError(f"Checkpoint {folder} lists {len(card['classes'])} classes but its model has "
                              f"{config.num_classes}; the card was edited, re-export the checkpoint.")
    tensors = read_tensors(verified_file(folder, card, "weights"))
    backbone_in_file = any(k.startswith("backbone.") for k in tensors) and not config.finetune
    expected_sha = card["backbone"].get("weights_sha256") if isinstance(card["backbone"], dict) else None
    try:
        weights = RANDOM_WEIGHTS if (backbone_in_file or config.finetune) else backbone_weights
        backbone = Backbone(config.backbone, weights, frozen=not config.finetune)
    except ConfigError as exc:
        raise CheckpointError(f"Cannot rebuild the backbone of checkpoint {folder}: {exc}") from None
    if expected_sha and backbone.weights_sha256 and backbone.weights_sha256 != expected_sha:
        raise CheckpointError(f"Checkpoint {folder} was trained on backbone weights {expected_sha[:12]}..., "
                              f"but {backbone.weights_path} is {backbone.weights_sha256[:12]}...; "
                              "pass the same --backbone-weights file used in training.")
    model = FRPT(config, backbone)
    target = model.state_dict()
    expected_keys = set(model.learned_state_dict()) | ({k for k in target if k.startswith("backbone.")} if backbone_in_file else set())
    missing, unexpected = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
    wrong = [k for k in expected_keys & set(tensors) if tensors[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"wrong shape for {wrong[:3]}")
        raise CheckpointError(f"Weights in {folder} do not fit the {config.preset}/{config.variant} model on "
                              f"{config.backbone} ({detail}); the card and the tensors disagree.")
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), card


def load_train_state(card: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The optimiser state saved beside a training checkpoint, or None."""
    if "train_state" not in card["files"]:
        return None
    return read_tensors(verified_file(Path(card["path"]), card, "train_state"))
