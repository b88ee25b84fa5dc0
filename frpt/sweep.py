"""Sweep a learned prompt over the test split: R@1 and MAP@R as its strength (and, for the crop, its box) varies.

The prompt's strength is the saliency temperature T (paper Eq. 2 for the warp; A^(1/T) for the compact crop): T < 1
sharpens the saliency (a stronger, tighter zoom), T > 1 flattens it, and its limit, uniform saliency, is the
identity ("no prompt": the warp leaves the image as it is, the crop takes the whole image). Every setting embeds the
whole split with the same model and scores it as ``frpt evaluate`` does (leave-one-out cosine retrieval), so the
learned setting reproduces ``evaluate``'s figures and the curve says whether the learned strength is where
retrieval peaks.

Cost: the split is read once; each batch goes through every setting. For the crop prompt the maps of the original
and flipped images do not depend on the prompt: they are computed once per batch (or read from the compact
preset's feature cache, :mod:`frpt.feature_cache`) and only the two crop views are run per setting; the identity
setting's crops are the original images, so it costs no backbone pass. The curve is stored beside the checkpoint's
gallery (``<checkpoint>/gallery/<dataset>-<split>-<key>.sweep.json``, a key that does not depend on where the
dataset lives: :func:`sweep_file`) with, for the identity and learned settings, each query's nearest neighbour,
from which :func:`class_effects` finds the classes the prompt helps and hurts most.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.base import RetrievalDataset
from .errors import ConfigError
from .engine import Plan, backbone_maps, forward_images, inference, plan
from .evaluation import loader as batches
from .fileio import atomic_write_text
from .metrics import map_at_r, neighbours, recall_at_k
from .models import FRPT, PromptEdit
from .models.crop import CropPrompt

FORMAT, VERSION = "frpt-prompt-sweep", 1
TEMPERATURES = (0.25, 0.5, 0.75, 1.5, 2.0, 4.0)  # besides the learned 1.0 and the identity (T -> infinity)
SCALES = (0.6, 0.8, 1.25, 1.6)                    # crop prompt: the learned box's half-sides times these
PER_QUERY = ("identity", "learned")              # settings whose per-query nearest neighbours are stored


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: its name ("identity", "learned", or the value changed) and the edit it applies."""

    name: str
    edit: PromptEdit


def prompt_kind(model: FRPT) -> str | None:
    """"crop" (compact preset), "warp" (the published DPP), or None for a model without a prompt."""
    if model.prompt is None:
        return None
    return "crop" if isinstance(model.prompt, CropPrompt) else "warp"


def sweep_settings(kind: str, temperatures: Sequence[float] | None = None,
                   scales: Sequence[float] | None = None) -> list[Setting]:
    """The identity, the learned prompt, each temperature, and (crop prompt) each box scale at the learned
    temperature; a value equal to the learned one is the learned setting, not a second point."""
    temperatures = TEMPERATURES if temperatures is None else temperatures
    scales = (SCALES if kind == "crop" else ()) if scales is None else scales
    if kind != "crop" and scales:
        raise ConfigError("A box scale applies to the crop prompt (compact preset); this checkpoint's prompt is "
                          "the warp, so sweep its temperature only.")
    for name, values in (("temperature", temperatures), ("box scale", scales)):
        bad = [v for v in values if not (np.isfinite(v) and v > 0)]
        if bad:
            raise ConfigError(f"A {name} of {bad[0]:g} is not usable; give positive numbers.")
    out = [Setting("identity", PromptEdit(identity=True)), Setting("learned", PromptEdit())]
    out += [Setting(f"temperature={t:g}", PromptEdit(temperature=float(t)))
            for t in sorted(set(temperatures)) if t != 1.0]
    out += [Setting(f"scale={s:g}", PromptEdit(scale=float(s))) for s in sorted(set(scales)) if s != 1.0]
    return out


@dataclass
class SettingResult:
    """One setting's figures on the split (the JSON line ``frpt sweep`` prints)."""

    setting: str
    temperature: float | None   # None for the identity (its limit is T -> infinity)
    scale: float
    metrics: dict[str, float]

    def line(self) -> dict[str, Any]:
        return {"setting": self.setting, "temperature": self.temperature, "scale": self.scale, **self.metrics}


@dataclass
class SweepResult:
    """The curve and, for :data:`PER_QUERY` settings, each query's nearest neighbour (dataset index)."""

    prompt: str
    settings: list[SettingResult]
    labels: np.ndarray
    top1: dict[str, np.ndarray] = field(default_factory=dict)
    precision: str = "fp32"
    seconds: float = 0.0
    path: Path | None = None
    engine: str = "torch"  # the inference engine of the frozen backbone's passes (frpt.engine)

    def get(self, name: str) -> SettingResult:
        for s in self.settings:
            if s.setting == name:
                return s
        raise KeyError(name)


def _scores(embeddings: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    return {**recall_at_k(embeddings, labels), "map@r": map_at_r(embeddings, labels)}


def run_sweep(model: FRPT, dataset: RetrievalDataset, settings: Sequence[Setting], *, batch_size: int = 64,
              precision: str = "auto", engine: str | None = None, device: str | torch.device | None = None,
              workers: int | None = None, feature_cache: str | os.PathLike | None = None, progress: bool = False,
              on_progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Embed ``dataset`` (the test split, items ``(image, label, index)``) under every setting and score each.

    ``feature_cache`` (crop prompt only): the compact preset's cache folder (``frpt train --feature-cache``); the
    test maps of the checkpoint's views are read from it (and computed into it where missing), so the original,
    flipped and learned crop views cost nothing on a second run. ``on_progress(images done, images)`` after each
    batch (the app's progress bar). An image that cannot be read is an error, as in ``frpt evaluate``. The frozen
    backbone's passes run on ``engine`` (:mod:`frpt.engine`), as ``frpt evaluate``'s do."""
    kind = prompt_kind(model)
    if kind is None:
        raise ConfigError(f"This checkpoint ({model.config.variant}) has no prompt to sweep; pass an FRPT or "
                          "DPP+PT checkpoint.")
    if feature_cache is not None and kind != "crop":
        raise ConfigError("--feature-cache serves the crop prompt's views (compact preset); this checkpoint's "
                          "prompt is the warp, so leave it out.")
    device = torch.device(device) if device is not None else model.pixel_mean.device
    started = time.perf_counter()
    cached = None
    if feature_cache is not None:
        from .feature_cache import cache_split

        cached = cache_split(model, dataset, model.config.view_list, feature_cache, "test", batch_size=batch_size,
                             workers=workers, precision=precision, engine=engine, progress=progress)
    plan_ = plan(engine, precision, device, model)
    embeddings: dict[str, list[torch.Tensor]] = {s.name: [] for s in settings}
    labels: list[torch.Tensor] = []
    bar = tqdm(total=len(dataset), unit="img", disable=not progress, desc=f"sweep ({len(settings)} settings)")
    done = 0
    with inference(model, plan_, device):
        for images, targets, index in batches(dataset, batch_size, workers):
            images = images.to(device)
            base, learned = _known_maps(model, images, index, cached, device, plan_) if kind == "crop" else ({}, {})
            for s in settings:
                known = (learned if s.name == "learned" and learned else base) or None
                out = forward_images(model, images, plan_, device, edit=s.edit, known=known)
                embeddings[s.name].append(out.embedding.float().cpu())
            labels.append(torch.as_tensor(targets))
            done += len(images)
            bar.update(len(images))
            if on_progress is not None:
                on_progress(done, len(dataset))
    bar.close()
    label_np = torch.cat(labels).numpy()
    results, top1 = [], {}
    for s in settings:
        emb = torch.cat(embeddings.pop(s.name))
        results.append(SettingResult(s.name, None if s.edit.identity else s.edit.temperature, s.edit.scale,
                                     _scores(emb, label_np)))
        if s.name in PER_QUERY:
            top1[s.name] = neighbours(emb, 1)[1][:, 0].numpy()
    return SweepResult(kind, results, label_np, top1, plan_.precision, time.perf_counter() - started,
                       engine=plan_.engine)


def _known_maps(model: FRPT, images: torch.Tensor, index: torch.Tensor, cached, device: torch.device,
                plan_: Plan) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(maps no edit changes: "orig", "flip"; the learned setting's every view, where cached) for one batch."""
    if cached is not None:
        rows = index.numpy()
        read = {v: torch.from_numpy(np.asarray(m[rows], dtype=np.float32)).to(device) for v, m in cached.maps.items()}
        return {v: read[v] for v in ("orig", "flip") if v in read}, read
    base = {"orig": backbone_maps(model, images, plan_)}
    if "flip" in model.config.view_list:
        base["flip"] = backbone_maps(model, images.flip(-1), plan_)
    return base, {}


# ---------------------------------------------------------------- storage

def split_fingerprint(dataset: RetrievalDataset) -> str:
    """sha256 of what the split holds, wherever its folder lives: its class names, then each image's path relative
    to the dataset's root (``/``-separated; a generated set's sample ids as they are) and its label, in dataset
    order (the order the curve's per-query neighbours index). The same split read from another folder, another
    mount or another machine has the same fingerprint; a split with another image, label or order has another."""
    base = dataset.root
    prefix = os.path.join(base, "") if base else None
    digest = hashlib.sha256()
    digest.update(json.dumps(list(dataset.classes)).encode())
    for path, label in dataset.samples:
        path = os.fspath(path)
        if prefix is not None:
            path = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, base)
        digest.update(f"\n{path.replace(os.sep, '/')}\t{int(label)}".encode())
    return digest.hexdigest()


def sweep_file(card: dict[str, Any], dataset: RetrievalDataset, root: str | os.PathLike | None = None) -> Path:
    """Where the curve of ``card``'s checkpoint on ``dataset`` lives: beside its gallery
    (``<checkpoint>/gallery/<dataset>-<split>-<key>.sweep.json``), keyed on the weights (sha256), the dataset's
    name and split, its number of images, the input size and :func:`split_fingerprint`, so a retrained checkpoint,
    another split or another copy of the data with other contents never shows a stale curve.

    The key is portable on purpose: unlike :func:`frpt.gallery.gallery_file`'s, it does not hash the dataset
    root's absolute path, so a curve shipped with a checkpoint (``assets/cub/<name>/gallery/``) is found on any
    machine whose copy of the split holds the same images and labels in the same order. ``root`` is not part of the
    key (the dataset knows where it was read from); it stays in the signature for the callers that pass it. A curve
    stored under the earlier key (which hashed the absolute root, before this one) is simply not found: the page
    offers to compute it again, and ``frpt sweep`` writes it under this key."""
    ident = {"weights": card["files"].get("weights_sha256"), "dataset": dataset.name, "split": dataset.split,
             "n": len(dataset), "input": card["input_size"], "contents": split_fingerprint(dataset)}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return Path(card["path"]) / "gallery" / f"{dataset.name}-{dataset.split}-{key}.sweep.json"


def save_sweep(path: Path, result: SweepResult, card: dict[str, Any]) -> Path:
    """Write the curve atomically (JSON); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, "weights_sha256": card.get("files", {}).get("weights_sha256"),
            "prompt": result.prompt, "engine": result.engine, "precision": result.precision,
            "seconds": round(result.seconds, 1),
            "images": int(len(result.labels)), "settings": [s.line() for s in result.settings],
            "labels": result.labels.tolist(), "top1": {k: v.tolist() for k, v in result.top1.items()}}
    atomic_write_text(path, json.dumps(data) + "\n")
    result.path = path
    return path


def load_sweep(path: Path, card: dict[str, Any] | None = None) -> SweepResult | None:
    """The stored curve, or None when there is none, it is damaged, or (with ``card``) it was made for other
    weights."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        if card is not None and data.get("weights_sha256") != card.get("files", {}).get("weights_sha256"):
            return None
        settings = [SettingResult(s["setting"], s["temperature"], s["scale"],
                                  {k: v for k, v in s.items() if k not in ("setting", "temperature", "scale")})
                    for s in data["settings"]]
        labels = np.asarray(data["labels"], dtype=np.int64)
        top1 = {k: np.asarray(v, dtype=np.int64) for k, v in data["top1"].items()}
        if any(len(v) != len(labels) for v in top1.values()):
            return None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing or damaged: the page offers to compute it again
    return SweepResult(data["prompt"], settings, labels, top1, data.get("precision", "fp32"),
                       data.get("seconds", 0.0), Path(path), data.get("engine", "torch"))


# ---------------------------------------------------------------- where the prompt helps and hurts

@dataclass(frozen=True)
class ClassEffect:
    """A test class's R@1 without the prompt (identity) and with it, and one query of the class whose nearest
    neighbour the prompt changed in the direction of the class's change (None when no query's did)."""

    label: int
    r1_identity: float
    r1_learned: float
    queries: int
    example: int | None
    neighbour_identity: int | None   # the example's nearest neighbour without the prompt (dataset index)
    neighbour_learned: int | None    # ... and with it

    @property
    def change(self) -> float:
        return self.r1_learned - self.r1_identity


def class_effects(result: SweepResult, n: int = 5) -> tuple[list[ClassEffect], list[ClassEffect]]:
    """(helps, hurts): up to ``n`` classes whose R@1 the learned prompt raises most against no prompt (largest
    first, only rises) and up to ``n`` it lowers most (only falls). Ties keep label order."""
    labels = result.labels
    before, after = result.top1["identity"], result.top1["learned"]
    hit_before, hit_after = labels[before] == labels, labels[after] == labels
    effects = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rise = float(hit_after[rows].mean() - hit_before[rows].mean())
        flipped = rows[(hit_after[rows] & ~hit_before[rows]) if rise > 0 else (hit_before[rows] & ~hit_after[rows])]
        ex = int(flipped[0]) if len(flipped) else None
        effects.append(ClassEffect(int(c), float(hit_before[rows].mean()), float(hit_after[rows].mean()), len(rows),
                                   ex, None if ex is None else int(before[ex]), None if ex is None else int(after[ex])))
    helps = sorted((e for e in effects if e.change > 0), key=lambda e: -e.change)[:n]
    hurts = sorted((e for e in effects if e.change < 0), key=lambda e: e.change)[:n]
    return helps, hurts


__all__ = ["TEMPERATURES", "SCALES", "Setting", "prompt_kind", "sweep_settings", "SettingResult", "SweepResult",
           "run_sweep", "split_fingerprint", "sweep_file", "save_sweep", "load_sweep", "ClassEffect", "class_effects"]
