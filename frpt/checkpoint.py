"""Checkpoints: a folder with the learned tensors as safetensors and a JSON card. Loading never unpickles.

Layout (``FORMAT_VERSION`` 1)::

    card.json                      preset, variant, model/train config, backbone name + weights sha256,
                                   class names, input size, mean/std, metrics, epoch, file names + sha256;
                                   training cards also ``world_size`` (processes under torchrun, 1 without)
                                   and ``global_batch_size`` (the batch of one optimiser step, all processes)
    model-e0007.safetensors        learned tensors only (the frozen backbone is rebuilt from its weights)
    train-state-e0007.safetensors  optimiser state for --resume (training checkpoints only)
    log.csv                        per-epoch training log (written by frpt.training)

The card is written last, atomically, and names the tensor files by epoch, so it is the commit point: a run
killed at any moment leaves either the previous complete checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from . import __version__
from .config import PRESETS, PROMPTS, VARIANTS, VIEWS, ZOOM_VIEWS, ModelConfig, TrainConfig, from_dict
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write, atomic_write_text, remove_stale_temps
from .models import RANDOM_WEIGHTS, FRPT, Backbone, file_sha256
from .models.backbone import timm_name
from .paths import plain_file, user_folder

FORMAT = "frpt-checkpoint"
FORMAT_VERSION = 1
CARD = "card.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar"}
MAX_CARD_BYTES = 16 * 2**20   # a real card is a few KiB; refuse to parse anything huge
# Upper bounds for ModelConfig integers, so a garbled card cannot make the model allocate gigabytes when built
# (grid/kernel/padding sizes are 31/31/30 in both presets).
_INT_LIMITS = {"num_classes": 10**6, "input_size": 4096}
_OTHER_INT_LIMIT = 256
# Float fields where 0 is a valid "disabled" (zoom_half: no zoom views); the others must be > 0.
_ZERO_MEANS_OFF = {"saliency_bound", "crop_margin", "zoom_half"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TENSOR_FILE = re.compile(r"(model|train-state)-e\d{4,}\.safetensors")
#: How the weights file may store floating tensors (card ``files.weights_dtype``; absent: as the model holds them).
#: float16 halves a shipped checkpoint (the compact whitening matrix is 1280 x 1280); loading casts back to fp32.
STORAGE_DTYPES = {"float16": torch.float16}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    # Serialise in memory and let atomic_write own the only temp file: safetensors' save_file writes through a
    # temp file of its own (".tmpXXXXXX", Rust's tempfile) that a killed process would leave in the checkpoint.
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return file_sha256(path)


def save_checkpoint(folder: str | os.PathLike, model: FRPT, *, classes: list[str], dataset: dict[str, Any],
                    train: TrainConfig | None = None, epoch: int = 0, metrics: dict[str, Any] | None = None,
                    train_state: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None,
                    storage_dtype: str | None = None) -> Path:
    """Write (or advance) the checkpoint in ``folder``; returns the card path. ``storage_dtype`` "float16" stores
    the floating weights in half precision (for sharing; recorded in the card, cast back to fp32 on loading)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    tensors = model.learned_state_dict()
    if model.backbone.weights_sha256 is None and not model.config.finetune:
        # A randomly initialised backbone cannot be rebuilt from a weights file, so it travels with the checkpoint.
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    files: dict[str, Any] = {"weights": f"model-e{epoch:04d}.safetensors"}
    if storage_dtype is not None:
        if storage_dtype not in STORAGE_DTYPES:
            raise CheckpointError(f"Storage dtype {storage_dtype!r} is not offered; use one of {sorted(STORAGE_DTYPES)}.")
        stored = {k: v.to(STORAGE_DTYPES[storage_dtype]) if v.is_floating_point() else v for k, v in tensors.items()}
        overflow = sorted(k for k, v in stored.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if overflow:
            raise CheckpointError(f"Weights {overflow[:3]} exceed the {storage_dtype} range; export without "
                                  "half precision.")
        tensors, files["weights_dtype"] = stored, storage_dtype
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
    card["sealed_sha256"] = card_seal(card)
    atomic_write_text(folder / CARD, json.dumps(card, indent=2))
    # The new card is committed; tensor files it does not name can go (including those of a run killed between
    # writing its tensors and its card, which no card ever named).
    keep = {files.get("weights"), files.get("train_state")}
    for stale in folder.iterdir():
        if _TENSOR_FILE.fullmatch(stale.name) and stale.name not in keep:
            stale.unlink(missing_ok=True)
    return folder / CARD


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise CheckpointError(f"{path} is {path.stat().st_size / 2**20:.0f} MiB, far larger than an FRPT card; "
                                  "the checkpoint is damaged or not an FRPT checkpoint.")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON card ({type(exc).__name__}); "
                              "the checkpoint is damaged, re-export or retrain it.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not an FRPT checkpoint card; re-export or retrain the checkpoint.")
    return data


#: Card fields the loader relies on; ``sealed_sha256`` hashes them so a damaged or hand-edited card that still parses
#: (say grid_padding 30 -> 38, which no tensor shape would reveal) is refused instead of silently changing the model.
SEALED_FIELDS = ("format_version", "preset", "variant", "model", "backbone", "classes", "input_size", "mean", "std",
                 "files")


def card_seal(card: dict[str, Any]) -> str:
    """sha256 of the sealed fields in canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps({k: card.get(k) for k in SEALED_FIELDS}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resolve_folder(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file():
        raise CheckpointError(f"{p.name} is a pickle file, which FRPT never loads because unpickling can run code; "
                              "use a checkpoint folder with card.json and .safetensors files.")
    if p.is_file() and p.name == CARD:
        p = p.parent
    if p.is_file():
        raise CheckpointError(f"{p.name} is not a checkpoint folder; pass the folder holding card.json.")
    # Symlink loops, devices, FIFOs and /proc, /sys, /dev: one sentence from stat alone, nothing listed or opened.
    p = Path(user_folder(p, "Checkpoint", "pass a folder written by `python -m frpt train`", CheckpointError))
    if not plain_file(p / CARD):
        raise CheckpointError(f"Checkpoint folder {p} has no card.json; it is incomplete or not an FRPT checkpoint.")
    return p


def load_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's card (format, version, field types, self-consistency)."""
    folder = _resolve_folder(path)
    card = _read_json(folder / CARD)
    if card.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CARD} is not an FRPT checkpoint card (format {card.get('format')!r}).")
    version = card.get("format_version")
    if _is_int(version) and version > FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint {folder} uses format version {version!r}, newer than this library "
                              f"supports ({FORMAT_VERSION}); upgrade frpt to load it.")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"Checkpoint {folder} has an invalid format version {version!r}; "
                              "the card is garbled, retrain or re-export the checkpoint.")
    required = ("preset", "variant", "model", "backbone", "classes", "files", "input_size", "mean", "std")
    missing = [k for k in required if k not in card]
    if missing or not isinstance(card.get("files"), dict) or "weights" not in card["files"]:
        raise CheckpointError(f"Checkpoint card {folder / CARD} lacks {missing or ['files.weights']}; "
                              "it is garbled, retrain or re-export the checkpoint.")
    problem = _card_problem(card)
    if problem:
        raise CheckpointError(f"Checkpoint card {folder / CARD} is inconsistent ({problem}); "
                              "it was edited or damaged, retrain or re-export the checkpoint.")
    if "sealed_sha256" in card:  # cards written before the seal existed have none and are checked field by field
        try:
            intact = card["sealed_sha256"] == card_seal(card)
        except (TypeError, ValueError):
            intact = False
        if not intact:
            raise CheckpointError(f"Checkpoint card {folder / CARD} was modified after it was written (its "
                                  "sealed_sha256 does not match); it was edited or damaged, re-copy or retrain it.")
    card["path"] = str(folder)
    return card


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _card_problem(card: dict[str, Any]) -> str | None:
    """What makes a card self-contradictory or ill-typed (None if nothing): checked before any tensor is read."""
    model, backbone, files = card["model"], card["backbone"], card["files"]
    if not isinstance(model, dict):
        return "model is not a mapping"
    if not isinstance(backbone, dict) or not isinstance(backbone.get("name"), str):
        return "backbone.name is missing"
    if backbone.get("weights_sha256") is not None and not _SHA256.fullmatch(str(backbone["weights_sha256"])):
        return "backbone.weights_sha256 is not a sha256 digest"
    if not isinstance(card["classes"], list) or not all(isinstance(c, str) for c in card["classes"]):
        return "classes is not a list of names"
    if not _is_int(card["input_size"]) or not 0 < card["input_size"] <= _INT_LIMITS["input_size"]:
        return f"input_size {card['input_size']!r} is not a positive integer"
    for key in ("mean", "std"):
        v = card[key]
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                            and math.isfinite(x) for x in v)):
            return f"{key} is not three numbers"
    for field, value in (("preset", card.get("preset")), ("variant", card.get("variant")),
                         ("backbone", backbone["name"]), ("input_size", card["input_size"])):
        if field in model and value is not None and model[field] != value:
            return f"{field} {value!r} disagrees with the model's {model[field]!r}"
    for key in ("weights", "train_state"):
        if key not in files:
            continue
        name = files[key]
        if not (isinstance(name, str) and name.endswith(".safetensors") and Path(name).name == name
                and not name.startswith(".")):
            return f"files.{key} {name!r} is not a .safetensors file name inside the checkpoint folder"
        if not isinstance(files.get(f"{key}_sha256"), str) or not _SHA256.fullmatch(files[f"{key}_sha256"]):
            return f"files.{key}_sha256 is not a sha256 digest"
    if "weights_dtype" in files and files["weights_dtype"] not in STORAGE_DTYPES:
        return f"files.weights_dtype {files['weights_dtype']!r} is not one of {sorted(STORAGE_DTYPES)}"
    return None


def _model_config(card: dict[str, Any], folder: Path) -> ModelConfig:
    """The card's ModelConfig, with every field type- and range-checked (a garbled value must not build a model)."""
    try:
        config = from_dict(ModelConfig, card["model"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"Checkpoint {folder} has an unusable model config ({exc}).") from None
    if config.preset not in PRESETS or config.variant not in VARIANTS:
        raise CheckpointError(f"Checkpoint {folder} names an unknown preset/variant "
                              f"{config.preset!r}/{config.variant!r}; it was edited or comes from another tool.")
    for f in fields(ModelConfig):
        value, default = getattr(config, f.name), f.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = _is_int(value) and 0 <= value <= _INT_LIMITS.get(f.name, _OTHER_INT_LIMIT)
        elif isinstance(default, float):
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (value > 0 or (value == 0 and f.name in _ZERO_MEANS_OFF)))
        else:
            ok = isinstance(value, str)
        if not ok:
            raise CheckpointError(f"Checkpoint {folder} has an invalid model.{f.name} {value!r}; "
                                  "the card was edited or damaged, retrain or re-export the checkpoint.")
    views = config.views.split(",")
    zoom = any(v in ZOOM_VIEWS for v in views)
    if config.prompt not in PROMPTS or not views or any(v not in VIEWS for v in views) \
            or not 0 < config.crop_min_half <= config.crop_max_half <= 0.5 or config.zoom_half > 0.5 \
            or (zoom and (config.prompt != "crop" or not config.zoom_half)):
        raise CheckpointError(f"Checkpoint {folder} has an unknown prompt {config.prompt!r}, views {config.views!r} "
                              "or crop or zoom limits; the card was edited or comes from another tool.")
    return config


def verified_file(folder: Path, card: dict[str, Any], key: str) -> Path:
    name = card["files"].get(key)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"Checkpoint card in {folder} names an invalid {key} file {name!r}; "
                              "the card was edited, retrain or re-export the checkpoint.")
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
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".")[:200] or type(exc).__name__
        raise CheckpointError(f"{path.name} is not a valid safetensors file ({reason}); "
                              "re-copy the checkpoint.") from None


def _as_stored(tensors: dict[str, torch.Tensor], card: dict[str, Any], folder: Path) -> dict[str, torch.Tensor]:
    """The weights cast back to fp32 when the card says they were stored in half precision (and every floating one
    was: a file that disagrees with its card is refused, not silently cast)."""
    stored = card["files"].get("weights_dtype")
    if stored is None:
        return tensors
    dtype = STORAGE_DTYPES[stored]
    other = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.dtype != dtype)
    if other:
        raise CheckpointError(f"Weights in {folder} are not all {stored} as the card records ({other[:3]}); "
                              "the card and the tensors disagree, re-copy or re-export the checkpoint.")
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def check_tensors(model: FRPT, tensors: dict[str, torch.Tensor], folder: Path, *, with_backbone: bool) -> None:
    """Raise a CheckpointError unless ``tensors`` are exactly the model's learned tensors (names, shapes, dtypes,
    finite values), so ``load_state_dict`` can neither fail half-way nor load garbage."""
    target = model.state_dict()
    config = model.config
    expected_keys = set(model.learned_state_dict()) | ({k for k in target if k.startswith("backbone.")}
                                                       if with_backbone else set())
    missing, unexpected = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
    wrong = sorted(k for k in expected_keys & set(tensors)
                   if tensors[k].shape != target[k].shape or tensors[k].dtype != target[k].dtype)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"wrong shape or dtype for {wrong[:3]}")
        raise CheckpointError(f"Weights in {folder} do not fit the {config.preset}/{config.variant} model on "
                              f"{config.backbone} ({detail}); the card and the tensors disagree.")
    bad = sorted(k for k in expected_keys if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all())
    if bad:
        raise CheckpointError(f"Weights in {folder} contain NaN or infinite values ({bad[:3]}); the training "
                              "diverged or the file was damaged, use an earlier checkpoint.")


def load_checkpoint(path: str | os.PathLike, *, backbone_weights: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu") -> tuple[FRPT, dict[str, Any]]:
    """Rebuild the model a checkpoint describes, in eval mode: ``(model, card)``."""
    card = load_card(path)
    folder = Path(card["path"])
    config = _model_config(card, folder)
    if config.num_classes != len(card["classes"]) and config.trainable:
        raise CheckpointError(f"Checkpoint {folder} lists {len(card['classes'])} classes but its model has "
                              f"{config.num_classes}; the card was edited, re-export the checkpoint.")
    tensors = _as_stored(read_tensors(verified_file(folder, card, "weights")), card, folder)
    backbone_in_file = any(k.startswith("backbone.") for k in tensors) and not config.finetune
    expected_sha = card["backbone"].get("weights_sha256")
    try:
        weights = RANDOM_WEIGHTS if (backbone_in_file or config.finetune) else backbone_weights
        backbone = Backbone(config.backbone, weights, frozen=not config.finetune)
    except ConfigError as exc:
        raise CheckpointError(f"Cannot rebuild the backbone of checkpoint {folder}: {exc}") from None
    if expected_sha and backbone.weights_sha256 and backbone.weights_sha256 != expected_sha:
        raise CheckpointError(f"Checkpoint {folder} was trained on backbone weights {expected_sha[:12]}..., "
                              f"but {backbone.weights_path} is {backbone.weights_sha256[:12]}...; "
                              "pass the same --backbone-weights file used in training.")
    try:
        model = FRPT(config, backbone)
    except (ValueError, RuntimeError, TypeError, KeyError, IndexError, ZeroDivisionError, MemoryError,
            ConfigError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".")[:200] or type(exc).__name__
        raise CheckpointError(f"Checkpoint {folder} describes a model that cannot be built ({reason}); "
                              "the card was edited or damaged, retrain or re-export the checkpoint.") from None
    check_tensors(model, tensors, folder, with_backbone=backbone_in_file)
    model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), card


def load_train_state(card: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The optimiser state saved beside a training checkpoint, or None."""
    if "train_state" not in card["files"]:
        return None
    return read_tensors(verified_file(Path(card["path"]), card, "train_state"))


def export_checkpoint(src: str | os.PathLike, dest: str | os.PathLike,
                      backbone_weights: str | os.PathLike | None = None, half: bool = False) -> Path:
    """Copy checkpoint ``src`` to the new folder ``dest`` for sharing: the learned tensors, card and training log,
    without the optimiser state (half the size of a paper-preset FRPT checkpoint). ``half`` stores the weights in
    float16 (half the size again; the card's metrics stay those of the fp32 weights, so re-evaluate the export).
    ``src`` is fully verified first, and ``dest`` appears only once it is complete. Returns the new card path."""
    dest = Path(dest)
    if dest.exists():
        raise CheckpointError(f"{dest} already exists; export into a new folder.")
    model, card = load_checkpoint(src, backbone_weights=backbone_weights)
    train = from_dict(TrainConfig, card["train"]) if card.get("train") else None
    scratch = dest.with_name(f".{dest.name}.export-tmp")
    if scratch.exists():  # left by an export that was killed
        shutil.rmtree(scratch)
    # Records a trainer added to the card (e.g. the compact recipe's report) travel with it.
    written = {"format", "format_version", "library_version", "preset", "variant", "model", "train", "backbone",
               "dataset", "classes", "input_size", "mean", "std", "epoch", "metrics", "files", "created",
               "sealed_sha256", "path", "exported_from"}
    extra = {k: v for k, v in card.items() if k not in written}
    save_checkpoint(scratch, model, classes=card["classes"], dataset=card.get("dataset") or {}, train=train,
                    epoch=card["epoch"], metrics=card.get("metrics"), extra={**extra, "exported_from": card["path"]},
                    storage_dtype="float16" if half else None)
    log = Path(card["path"]) / "log.csv"
    if log.is_file():
        (scratch / "log.csv").write_bytes(log.read_bytes())
    scratch.rename(dest)
    return dest / CARD
