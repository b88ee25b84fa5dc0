"""Training for the ``compact`` preset: FRPT on cached frozen features, sized for a 2-core CPU.

The backbone is frozen, so its feature maps of the training images never change: they are computed once per
view (:mod:`frpt.feature_cache`) and every epoch after that costs seconds. The recipe, in order:

1. Hold out the last ``val_fraction`` of the training classes as a validation split (never the test classes).
2. Cache the final maps of the original and flipped training images.
3. Prompt (variants with a DPP): train the crop prompt's saliency from class labels through a proxy, a
   saliency-weighted GeM of the original map feeding a temporary cosine classifier (or, opted into by
   ``prompt_supervision="boxes"``, by fitting the crop to the training images' boxes). Keep it only
   if its crops retrieve the validation classes better than the untrained (activation energy) saliency.
4. Zoom views (opt-in, ``"zoom"`` in ``ModelConfig.views``, a departure: issue 30's part zoom): the square's
   half-side is chosen among :data:`ZOOM_HALVES` by R@1 + MAP@R of the untrained multi-view embedding on the
   validation classes (unless ``ModelConfig.zoom_half`` fixes it) and stored in the config.
   Cache the crop (and zoom) views with the chosen prompt.
5. Head (CAH + GeM + BNNeck + classifier; variants with CAH or BNNeck): trained on every cached view, one epoch
   per pass over them, the epoch chosen by validation R@1 of the multi-view embedding; then retrained on all
   training classes for that many epochs.
6. Whitening (opt-in, ``ModelConfig.whitening``, a departure from Eq. 9): the within-class covariance of the
   head's pooled vectors (every view of the fit images) whitens the embedding; its shrinkage is chosen on the
   validation classes (or none kept, if no shrinkage beats the unwhitened embedding there), then it is refitted
   on every training class with the trained head.

Each stage is deterministic given the seed, and the expensive part (the cache) resumes chunk by chunk, so
``--resume`` after a kill redoes at most a chunk of backbone passes plus the stage's seconds-long epochs.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import CARD, load_card, save_checkpoint
from .config import PROMPT_VIEWS, ZOOM_VIEWS, TrainConfig
from .errors import CheckpointError
from .evaluation import Embeddings
from .feature_cache import CachedSplit, cache_split
from .losses import cross_entropy
from .metrics import retrieval_metrics
from .models import FRPT, GeneralizedMeanPooling
from .training import inference_record, build_optimizer, lr_at, store_test_gallery


def validation_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): the last ``round(val_fraction * classes)`` classes (by label) are held out whole."""
    classes = np.unique(labels)
    val_classes = int(round(val_fraction * len(classes)))
    if val_fraction and not 2 <= val_classes <= len(classes) - 2:
        raise CheckpointError(f"--val-fraction {val_fraction} holds out {val_classes} of {len(classes)} training "
                              "classes; choose a share that leaves at least 2 on each side.")
    held = set(classes[len(classes) - val_classes:].tolist()) if val_classes else set()
    val = np.array([i for i, y in enumerate(labels) if y in held], dtype=np.int64)
    fit = np.array([i for i, y in enumerate(labels) if y not in held], dtype=np.int64)
    return fit, val


def _weighted_gem(x: torch.Tensor, weights: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """GeM over space with saliency weights that sum to 1 (uniform weights give GeneralizedMeanPooling)."""
    return (x.float().clamp(min=1e-6).pow(p) * weights).sum(dim=(2, 3)).pow(1.0 / p)


def embed_cached(model: FRPT, maps: dict[str, np.ndarray], index: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """The model's embedding of images ``index`` from their cached per-view maps (as :meth:`FRPT.embed_maps`)."""
    return _embed_cached(model, maps, index, batch_size)[0]


@torch.no_grad()
def _embed_cached(model: FRPT, maps: dict[str, np.ndarray], index: np.ndarray, batch_size: int = 512
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding, pre-head embedding) of images ``index`` from their cached per-view maps."""
    was_training = model.training
    model.eval()
    device = model.pixel_mean.device
    after, before = [], []
    try:
        for start in range(0, len(index), batch_size):
            rows = index[start:start + batch_size]
            batch = {v: torch.from_numpy(np.asarray(m[rows], dtype=np.float32)).to(device) for v, m in maps.items()}
            embedding, pre_head, _ = model.embed_maps(batch)
            after.append(embedding.float().cpu())
            before.append(pre_head.float().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(after), torch.cat(before)) if after else (torch.zeros(0), torch.zeros(0))


def _score(embeddings: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    m = retrieval_metrics(embeddings, labels)
    m.pop("nmi", None)
    return m


class _CosineClassifier(nn.Module):
    """Scaled cosine logits: a temporary classifier for the prompt stage (discarded afterwards)."""

    def __init__(self, channels: int, num_classes: int, seed: int, scale: float = 16.0):
        super().__init__()
        # Its own generator: the prompt a seed trains must not depend on which head the variant built before it.
        init = torch.randn(num_classes, channels, generator=torch.Generator().manual_seed(seed))
        self.weight = nn.Parameter(init * 0.01)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).T


def box_targets(dataset: Dataset, indices: np.ndarray, input_size: int) -> torch.Tensor:
    """(N, 4) ground-truth boxes of ``dataset[indices]`` as (centre x, centre y, half-width, half-height) in the test
    transform's output (the view the cached maps saw), in fractions of its side. Raises when the dataset has no
    boxes."""
    from .data import transform_box

    box = getattr(dataset, "box", None)
    out = []
    for i in indices.tolist():
        b = box(int(i)) if box is not None else None
        if b is None:
            raise CheckpointError("--prompt-supervision boxes needs a dataset with boxes (cub or synthetic); "
                                  "train this one with --prompt-supervision labels.")
        x, y, w, h = transform_box(b, dataset.load_image(int(i)).size, input_size)
        out.append(((x + w / 2) / input_size, (y + h / 2) / input_size, w / 2 / input_size, h / 2 / input_size))
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def _batch_maps(cached: CachedSplit, fit: np.ndarray, picks: list[tuple[str, int]], device: torch.device
                ) -> torch.Tensor:
    """The cached maps of ``picks`` ((view, position in ``fit``) pairs) as one float32 batch on ``device``."""
    batch = np.stack([cached.maps[v][fit[i]] for v, i in picks])
    return torch.from_numpy(batch).to(device).float()  # fp16 on disk: move, then widen


def train_prompt(model: FRPT, cached: CachedSplit, fit: np.ndarray, cfg: TrainConfig, *,
                 boxes: torch.Tensor | None = None, progress: bool = True) -> list[float]:
    """Train the crop prompt's saliency on cached original/flipped maps of ``fit``; returns the loss per epoch.

    Proxy objective (``boxes`` None): the saliency weights a GeM of the map, and a cosine classifier must tell the
    training classes apart from it, so the saliency learns where class evidence lies (from labels only). With
    ``boxes`` (the fit images' ground-truth boxes, :func:`box_targets`), the crop is fitted to them instead: both the
    saliency's mean and the crop's (clamped) centre are regressed onto the box centre, smooth L1; the flipped view's
    box is mirrored."""
    prompt, device = model.prompt, model.pixel_mean.device
    classes, targets = np.unique(cached.labels[fit], return_inverse=True)
    probe = _CosineClassifier(model.backbone.num_features, len(classes), cfg.seed).to(device)
    optimizer = torch.optim.Adam([{"params": prompt.parameters(), "lr": cfg.lr * cfg.prompt_lr_scale},
                                  {"params": probe.parameters(), "lr": cfg.lr}])
    views = [v for v in ("orig", "flip") if v in cached.maps]
    if boxes is not None:
        boxes = boxes.to(device)
        mirrored = boxes.clone()
        mirrored[:, 0] = 1 - mirrored[:, 0]
        view_boxes = {"orig": boxes, "flip": mirrored}
    samples = [(v, i) for v in views for i in range(len(fit))]
    losses = []
    for epoch in range(cfg.prompt_epochs):
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        total = 0.0
        for start in tqdm(range(0, len(samples), cfg.batch_size), desc=f"prompt {epoch + 1}/{cfg.prompt_epochs}",
                          disable=not progress, leave=False):
            picks = [samples[k] for k in order[start:start + cfg.batch_size].tolist()]
            maps = _batch_maps(cached, fit, picks, device)
            saliency = prompt.saliency(maps)
            if boxes is not None:
                target = torch.stack([view_boxes[v][i] for v, i in picks])
                # The clamped box centre is what the crop uses, but a whole-image box (the untrained state) pins it
                # at 0.5 with no gradient; the saliency's mean always has one, and pulling it to a corner also
                # concentrates the saliency, which shrinks the box.
                loss = (F.smooth_l1_loss(prompt.centre(saliency), target[:, :2], beta=0.05)
                        + F.smooth_l1_loss(prompt.box(saliency)[:, :2], target[:, :2], beta=0.05))
            else:
                y = torch.as_tensor(targets[[i for _, i in picks]], device=device)
                loss = F.cross_entropy(probe(_weighted_gem(maps, saliency)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(picks)
        losses.append(total / len(samples))
    return losses


def train_head(model: FRPT, cached: CachedSplit, fit: np.ndarray, cfg: TrainConfig, epochs: int, *,
               val: np.ndarray | None = None, progress: bool = True) -> list[dict[str, float]]:
    """Train CAH + embedding head on every cached view of ``fit`` for ``epochs`` epochs (cosine schedule over
    ``cfg.epochs``). Returns one record per epoch; with ``val``, each holds the validation metrics of the
    multi-view embedding and the head state of the best epoch is left in the model."""
    classes, targets = np.unique(cached.labels[fit], return_inverse=True)
    device = model.pixel_mean.device
    optimizer = build_optimizer(model, cfg)
    views = list(cached.maps)
    samples = [(v, i) for v in views for i in range(len(fit))]
    steps = len(samples) // cfg.batch_size
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    if val is not None:
        score = _score(embed_cached(model, cached.maps, val), cached.labels[val])
        history.append({"epoch": 0, **score})
        best = (score["recall@1"], 0, copy.deepcopy(model.state_dict()))
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        total = 0.0
        for step in tqdm(range(steps), desc=f"head {epoch + 1}/{epochs}", disable=not progress, leave=False):
            lr = lr_at(cfg, epoch, epoch * steps + step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            picks = [samples[k] for k in order[step * cfg.batch_size:(step + 1) * cfg.batch_size].tolist()]
            maps = _batch_maps(cached, fit, picks, device)
            y = torch.as_tensor(targets[[i for _, i in picks]], device=device)
            refined = model.cah(maps) if model.cah is not None else maps
            _, logits = model.head(refined)
            loss = cross_entropy(logits[:, :len(classes)], y, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(picks)
        record = {"epoch": epoch + 1, "train_loss": total / max(1, steps * cfg.batch_size), "lr": lr,
                  "seconds": time.perf_counter() - started}
        if val is not None:
            score = _score(embed_cached(model, cached.maps, val), cached.labels[val])
            record.update(score)
            if score["recall@1"] > best[0]:
                best = (score["recall@1"], epoch + 1, copy.deepcopy(model.state_dict()))
        history.append(record)
    if best is not None:
        model.load_state_dict(best[2])
    return history


def train_compact(model: FRPT, train_set: Dataset, cfg: TrainConfig, out_dir: str | Path, *, classes: list[str],
                  dataset_info: dict[str, Any], test_set: Dataset | None = None, resume: bool = False,
                  feature_cache: str | Path | None = None, batch_size: int = 32, workers: int | None = None,
                  precision: str = "fp32", engine: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the compact recipe (module docstring) and write one checkpoint into ``out_dir``; returns the card."""
    out_dir = Path(out_dir)
    if (out_dir / CARD).is_file():
        if not resume:
            raise CheckpointError(f"{out_dir} already holds a checkpoint; pass --resume to continue it or choose a new --out.")
        card = load_card(out_dir)
        stored = dict(card["model"])
        if not model.config.zoom_half:  # chosen by the run (not yet by this command's model): compare the rest
            stored["zoom_half"] = 0.0
        if stored != asdict(model.config) or card.get("train") != asdict(cfg):
            raise CheckpointError(f"{out_dir} holds a run with another model or training config; "
                                  "resume with the same options, or choose a new --out folder.")
        return card  # the compact recipe writes its checkpoint once, at the end: a card means it is done
    cache_root = Path(feature_cache) if feature_cache is not None else out_dir / "features"
    started = time.perf_counter()
    model.eval()
    kw = dict(batch_size=batch_size, workers=workers, precision=precision, engine=engine, progress=progress)
    base_views = tuple(v for v in model.config.view_list if v not in PROMPT_VIEWS)
    train_maps = cache_split(model, train_set, tuple(dict.fromkeys(("orig", "flip", *base_views))), cache_root,
                             "train", **kw)
    cache_seconds = train_maps.seconds
    fit, val = validation_split(train_maps.labels, cfg.val_fraction)
    report: dict[str, Any] = {"val_classes": len(np.unique(train_maps.labels[val])), "fit_images": len(fit),
                              "val_images": len(val)}
    if model.prompt is not None and cfg.prompt_epochs > 0:
        report.update(_choose_prompt(model, train_set, train_maps, fit, val, cfg, cache_root, kw))
    views = model.config.view_list
    if any(v in ZOOM_VIEWS for v in views) and not model.config.zoom_half:
        if not len(val):
            raise CheckpointError("The zoom views choose their half-side on the validation classes; pass "
                                  "--val-fraction above 0, or fix it with --zoom-half.")
        report["zoom_validation"] = choose_zoom(model, train_set, train_maps, val, cache_root, kw)
    train_maps = cache_split(model, train_set, views, cache_root, "train", **kw)
    cache_seconds += train_maps.seconds
    # Without CAH or BNNeck, training would move only the classifier, which the embedding does not use.
    head_trainable = model.cah is not None or model.head.neck is not None
    if head_trainable and cfg.epochs > 0:
        chosen = train_head(model, train_maps, fit, cfg, cfg.epochs, val=val if len(val) else None, progress=progress)
        best = max(chosen, key=lambda r: (r.get("recall@1", 0.0), -r["epoch"])) if len(val) else chosen[-1]
        report["head_validation"] = chosen
        report["head_epochs"] = best["epoch"]
    whitening = model.head.whitening
    if whitening is not None and len(val):
        report["whitening_validation"] = choose_whitening(model, train_maps, fit, val)
    if head_trainable and cfg.epochs > 0:
        if len(val):  # retrain on every training class for the chosen number of epochs
            _reset_head(model, cfg.seed)
            all_images = np.arange(len(train_maps.labels))
            report["head_final"] = train_head(model, train_maps, all_images, cfg, best["epoch"], progress=progress)
    if whitening is not None:
        shrink = report.get("whitening_validation", {}).get("shrink", WHITENING_SHRINKS[len(WHITENING_SHRINKS) // 2])
        whitening.reset()
        if shrink is not None:
            all_images = np.arange(len(train_maps.labels))
            x, y = _head_vectors(model, train_maps.maps, all_images, train_maps.labels)
            whitening.fit(x, y, shrink)
        report["whitening_shrink"] = shrink
    # Seconds of this run, and how many of them went into computing training-split maps that were not cached yet
    # (a row that reuses another row's --feature-cache skips those: add them back for a cold-start cost).
    report["train_seconds"] = round(time.perf_counter() - started, 1)
    report["train_cache_seconds"] = round(cache_seconds, 1)
    metrics: dict[str, Any] = {}
    test_emb = None
    if test_set is not None:
        test_maps = cache_split(model, test_set, views, cache_root, "test", **kw)
        after, before = _embed_cached(model, test_maps.maps, np.arange(len(test_maps.labels)))
        metrics = retrieval_metrics(after, test_maps.labels)
        test_emb = Embeddings(before.numpy(), after.numpy(), np.asarray(test_maps.labels), test_maps.plan)
    save_checkpoint(out_dir, model, classes=classes, dataset=dataset_info, train=cfg,
                    epoch=report.get("head_epochs", 0), metrics=metrics,
                    extra={"compact": report, **inference_record(test_emb)})
    store_test_gallery(out_dir, test_set, dataset_info, test_emb)  # at the plan that computed the cached maps
    return load_card(out_dir)


# Shrinkage grid for the within-class whitening (0: the raw covariance, 1: centring and a uniform scale only).
WHITENING_SHRINKS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def _head_vectors(model: FRPT, maps: dict[str, np.ndarray], index: np.ndarray, labels: np.ndarray,
                  batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's pre-whitening vectors (CAH, then pooling) of every view of images ``index``, stacked view by
    view, and their labels: what the whitening is fitted to."""
    was_training = model.training
    model.eval()
    device = model.pixel_mean.device
    out = []
    try:
        for m in maps.values():
            for start in range(0, len(index), batch_size):
                x = torch.from_numpy(np.asarray(m[index[start:start + batch_size]], dtype=np.float32)).to(device)
                out.append(model.head.features(model.cah(x) if model.cah is not None else x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out), torch.as_tensor(np.tile(labels[index], len(maps)))


def choose_whitening(model: FRPT, cached: CachedSplit, fit: np.ndarray, val: np.ndarray,
                     shrinks: tuple[float, ...] = WHITENING_SHRINKS) -> dict[str, Any]:
    """Fit the model's whitening on the fit images for each shrinkage and score the validation classes; returns
    the scores and the chosen ``shrink`` (None: the unwhitened embedding was as good, the whitening stays the
    identity). The criterion is R@1 + MAP@R: R@1 of 20 held-out classes sits near 92 % on CUB, where one image
    moves it by 0.08 points, while MAP@R ranks every image of the class."""
    whitening = model.head.whitening
    whitening.reset()
    labels = cached.labels[val]
    scores = {"none": _score(embed_cached(model, cached.maps, val), labels)}
    x, y = _head_vectors(model, cached.maps, fit, cached.labels)
    for shrink in shrinks:
        whitening.fit(x, y, shrink)
        scores[str(shrink)] = _score(embed_cached(model, cached.maps, val), labels)
    whitening.reset()
    criterion = lambda k: scores[k]["recall@1"] + scores[k]["map@r"]  # noqa: E731
    best = max(scores, key=lambda k: (criterion(k), k == "none"))  # a tie keeps the identity
    return {"scores": scores, "shrink": None if best == "none" else float(best)}


# Half-sides of the zoom views' square tried on validation. Issue 30's probe chose 0.3, the edge of its 0.2-0.3;
# on CUB at 288 px this grid chose 0.45, its edge again, on near-ties (bench/RESULTS.md, issue 30).
ZOOM_HALVES = (0.25, 0.3, 0.35, 0.4, 0.45)


def choose_zoom(model: FRPT, train_set: Dataset, train_maps: CachedSplit, val: np.ndarray, cache_root: Path,
                kw: dict[str, Any], halves: tuple[float, ...] = ZOOM_HALVES) -> dict[str, Any]:
    """Choose the zoom views' half-side: the untrained multi-view embedding (every configured view, the head's
    open gate, GeM, no whitening) of the validation images for each of ``halves``, scored by R@1 + MAP@R as
    :func:`choose_whitening`; the best is set in ``model.config.zoom_half``. Returns the scores (with the
    embedding without the zoom views under "none", for reference) and the chosen ``half``."""
    val_set = image_subset(train_set, val)
    views = model.config.view_list
    others = tuple(v for v in views if v not in ZOOM_VIEWS)
    maps = {v: train_maps.maps[v][val] for v in others if v in train_maps.maps}
    maps.update(cache_split(model, val_set, tuple(v for v in others if v not in maps), cache_root, "val", **kw).maps)
    labels, rows = train_maps.labels[val], np.arange(len(val))
    scores = {"none": _score(embed_cached(model, maps, rows), labels)}
    for half in halves:
        model.config = replace(model.config, zoom_half=half)
        zoom = cache_split(model, val_set, tuple(v for v in views if v in ZOOM_VIEWS), cache_root, "val", **kw)
        scores[str(half)] = _score(embed_cached(model, {**maps, **zoom.maps}, rows), labels)
    best = max(halves, key=lambda h: scores[str(h)]["recall@1"] + scores[str(h)]["map@r"])  # a tie: the smaller
    model.config = replace(model.config, zoom_half=best)
    return {"scores": scores, "half": best}


def image_subset(dataset: Dataset, index: np.ndarray) -> Dataset:
    """Images ``index`` of ``dataset`` with their ``samples`` and ``targets``, which the feature cache keys a split
    by and reads its labels from."""
    from torch.utils.data import Subset

    subset = Subset(dataset, index.tolist())
    for name in ("samples", "targets"):
        if hasattr(dataset, name):
            setattr(subset, name, [getattr(dataset, name)[i] for i in index])
    return subset


def _reset_head(model: FRPT, seed: int) -> None:
    """Re-initialise CAH and the embedding head from ``seed`` (deterministic; with the compact preset's open gate
    the re-initialised head embeds exactly like the untrained one, whatever its random weights)."""
    torch.manual_seed(seed)
    fresh = type(model)(model.config, model.backbone)
    for name in ("cah", "head"):
        if getattr(model, name) is not None:
            getattr(model, name).load_state_dict(getattr(fresh, name).state_dict())


def _choose_prompt(model: FRPT, train_set: Dataset, train_maps: CachedSplit, fit: np.ndarray, val: np.ndarray,
                   cfg: TrainConfig, cache_root: Path, kw: dict[str, Any]) -> dict[str, Any]:
    """Train the prompt, then keep whichever saliency (untrained or trained) gives the better validation R@1
    of the frozen multi-view GeM embedding through its crops (the zoom views, chosen after, are left out)."""
    val_set = image_subset(train_set, val)
    views = tuple(v for v in model.config.view_list if v not in ZOOM_VIEWS)

    def crop_score() -> float:
        crop_views = tuple(v for v in views if v.startswith("crop"))
        maps = {v: train_maps.maps[v][val] for v in views if v in train_maps.maps}
        maps.update(cache_split(model, val_set, crop_views, cache_root, "val", **kw).maps)
        gem = GeneralizedMeanPooling()
        emb = sum(F.normalize(gem(torch.from_numpy(np.asarray(m, dtype=np.float32))), dim=1) for m in maps.values())
        return _score(emb, train_maps.labels[val])["recall@1"]

    untrained = copy.deepcopy(model.prompt.state_dict())
    scores = {"untrained": crop_score() if len(val) else 0.0}
    boxes = box_targets(train_set, fit, model.config.input_size) if cfg.prompt_supervision == "boxes" else None
    losses = train_prompt(model, train_maps, fit, cfg, boxes=boxes, progress=kw["progress"])
    scores["trained"] = crop_score() if len(val) else 0.0
    keep = "trained" if scores["trained"] > scores["untrained"] else "untrained"
    if keep == "untrained":
        model.prompt.load_state_dict(untrained)
    return {"prompt_losses": losses, "prompt_validation_recall@1": scores, "prompt_kept": keep}
