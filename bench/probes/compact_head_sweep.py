"""Compact preset: which head lifts the held-out classes? A sweep on the cached maps of a trained compact checkpoint.

Every setting is fitted on the training classes minus the validation split (frpt.compact.validation_split: the
last 20 of the 100 training classes, held out whole), its epoch or size chosen on that validation split, and the
test split (the 100 unseen classes) scored once with the fitted head, for the record. Nothing is chosen on test.
Embeddings are the compact preset's: the mean of the L2-normalised per-view embeddings of the four cached views.

Settings (``--settings``, comma-separated names; default all):
  dpp+pt        GeM of each view, nothing trained (the DPP+PT row's embedding)
  cah-ce        the preset's CAH (Eq. 9, open gate) + GeM, CE with label smoothing 0.1 (the FRPT row's head)
  cah-ms        the same CAH, multi-similarity loss with its miner (pytorch-metric-learning) instead of CE
  cah-pa        the same CAH, proxy-anchor loss
  cah-cosface   the same CAH, a cosine-margin classifier (CosFace)
  cah-ce-drop   cah-ce with channel dropout 0.2 on the map and the gate's weights decayed toward the open gate
  pca-D         PCA whitening of the GeM vectors learned on the fit classes, D dimensions (closed form)
  lw-D          learned discriminative whitening (Radenovic et al., TPAMI 2019: whiten the within-class scatter,
                then keep the D leading directions of the between-class scatter), closed form
  lw-D-S        the same with shrinkage S (default 0.1); at D = C the between-class step is a rotation, so lw-C-S is
                the within-class whitening alone (frpt.models.head.WithinClassWhitening)
  lwview-D-S    lw fitted per view (its own mean and covariance for the original, flip, crop, crop-flip)
  lwavg-D-S     lw fitted to, and applied on, the four-view mean embedding instead of each view's vector
  lin-pa-D      a linear projection to D dimensions on the GeM vectors, initialised from lw-D, proxy-anchor
  lin-ms-D      the same, multi-similarity loss with its miner
  frpt-w        the library's path (frpt.compact.train_head, then choose_whitening): the checkpoint's model with
                ``whitening=True``, its CAH trained with CE on the fit classes, the whitening's shrinkage chosen on
                validation and fitted on the fit classes

    python bench/probes/compact_head_sweep.py --checkpoint runs/compact-frpt-engine \\
        --feature-cache runs/features-lite0-224

Writes one JSON record per setting to ``--out`` (default runs/head-sweep.json) and prints a table.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.compact import choose_whitening, embed_cached, _head_vectors, train_head, validation_split  # noqa: E402
from frpt.config import train_config  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.feature_cache import cache_split  # noqa: E402
from frpt.metrics import map_at_r, recall_at_k  # noqa: E402
from frpt.models import CategoryAwarenessHead, GeneralizedMeanPooling  # noqa: E402

GEM = GeneralizedMeanPooling()


def score(emb: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    return {"recall@1": recall_at_k(emb, labels, (1,))["recall@1"], "map@r": map_at_r(emb, labels)}


def multi_view(per_view: list[torch.Tensor]) -> torch.Tensor:
    """The compact preset's embedding: the mean of the L2-normalised per-view vectors."""
    return torch.stack([F.normalize(v.float(), dim=1) for v in per_view]).mean(0)


@torch.no_grad()
def pooled(maps: dict[str, np.ndarray], batch: int = 512) -> dict[str, torch.Tensor]:
    """GeM of every cached map, per view (N, C) float32."""
    return {v: torch.cat([GEM(torch.from_numpy(np.asarray(m[s:s + batch], dtype=np.float32)))
                          for s in range(0, len(m), batch)]) for v, m in maps.items()}


def balanced_batches(labels: np.ndarray, per_class: int, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` batches of ``batch // per_class`` classes with ``per_class`` samples each (pair losses need
    positives in the batch), drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    classes = np.array(sorted(by_class))
    out = []
    for _ in range(steps):
        picked = rng.choice(classes, size=min(len(classes), batch // per_class), replace=False)
        out.append(np.concatenate([rng.choice(by_class[c], size=per_class, replace=len(by_class[c]) < per_class)
                                   for c in picked]))
    return out


def make_loss(name: str, num_classes: int, dim: int) -> nn.Module:
    from pytorch_metric_learning import losses, miners

    if name == "ms":
        class MS(nn.Module):
            def __init__(self):
                super().__init__()
                self.loss, self.miner = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(0.1)

            def forward(self, emb, y):
                return self.loss(emb, y, self.miner(emb, y))
        return MS()
    if name == "pa":
        return losses.ProxyAnchorLoss(num_classes, dim, margin=0.1, alpha=32)
    if name == "cosface":
        return losses.CosFaceLoss(num_classes, dim, margin=0.2, scale=30)
    raise ValueError(name)


class MapHead(nn.Module):
    """CAH (Eq. 9, compact's open gate) + GeM, with an optional channel dropout on the map (train only) and an
    optional linear classifier for CE."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0, classifier: bool = True):
        super().__init__()
        self.cah = CategoryAwarenessHead(channels, 8, True, False, identity_init=True)
        self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes, bias=False) if classifier else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return GEM(self.cah(self.drop(maps)))


def embed_maps(head: MapHead, maps: dict[str, np.ndarray], index: np.ndarray, batch: int = 512) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        out = [multi_view([head(torch.from_numpy(np.asarray(m[index[s:s + batch]], dtype=np.float32)))
                           for m in maps.values()]) for s in range(0, len(index), batch)]
    return torch.cat(out)


def train_map_head(loss_name: str, train, fit, val, test, epochs: int, seed: int, *, dropout: float = 0.0,
                   open_gate_decay: float = 0.0) -> dict:
    """CAH on every cached view of the fit images; the epoch with the best validation R@1 is kept (0 = the
    untrained open gate)."""
    cfg = train_config("compact")
    classes, targets = np.unique(train.labels[fit], return_inverse=True)
    channels = next(iter(train.maps.values())).shape[1]
    torch.manual_seed(seed)
    head = MapHead(channels, len(classes), dropout, classifier=loss_name == "ce")
    loss_fn = None if loss_name == "ce" else make_loss(loss_name, len(classes), channels)
    params = [{"params": head.parameters(), "lr": cfg.lr}]
    if loss_fn is not None and list(loss_fn.parameters()):
        params.append({"params": loss_fn.parameters(), "lr": cfg.lr * 10})  # proxies / class centres move faster
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    open_gate = copy.deepcopy(head.cah.gate.state_dict())
    views = list(train.maps)
    n = len(fit)
    steps = (n * len(views)) // cfg.batch_size
    history = [{"epoch": 0, **score(embed_maps(head, train.maps, val), train.labels[val])}]
    best = (history[0]["recall@1"], 0, copy.deepcopy(head.state_dict()))
    for epoch in range(epochs):
        head.train()
        if loss_name in ("ms",):
            batches = balanced_batches(targets, 4, cfg.batch_size, steps, seed * 1_000_003 + epoch)
            rng = np.random.default_rng(seed + epoch)
            picks = [[(views[rng.integers(len(views))], i) for i in b] for b in batches]
        else:
            order = torch.randperm(n * len(views), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            picks = [[(views[k // n], int(k % n)) for k in order[s * cfg.batch_size:(s + 1) * cfg.batch_size].tolist()]
                     for s in range(steps)]
        for step, batch in enumerate(picks):
            lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + np.cos(np.pi * (epoch * steps + step) / (epochs * steps)))
            for g, base in zip(opt.param_groups, (cfg.lr, cfg.lr * 10)):
                g["lr"] = lr * base / cfg.lr
            x = torch.from_numpy(np.stack([train.maps[v][fit[i]] for v, i in batch])).float()
            y = torch.as_tensor(targets[[i for _, i in batch]])
            emb = head(x)
            if loss_fn is None:
                loss = F.cross_entropy(head.classifier(emb), y, label_smoothing=0.1)
            else:
                loss = loss_fn(emb, y)
            if open_gate_decay:
                loss = loss + open_gate_decay * sum(((p - open_gate[k]) ** 2).sum()
                                                    for k, p in head.cah.gate.named_parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        record = {"epoch": epoch + 1, **score(embed_maps(head, train.maps, val), train.labels[val])}
        history.append(record)
        if record["recall@1"] > best[0]:
            best = (record["recall@1"], epoch + 1, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return {"chosen": best[1], "history": history, "val": history[best[1]],
            "test": score(embed_maps(head, test.maps, np.arange(len(test.labels))), test.labels)}


def whitening(x: torch.Tensor, y: np.ndarray, dim: int, kind: str, shrink: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, projection (C, dim)) learned on L2-normalised vectors ``x`` of classes ``y``. ``pca``: PCA whitening
    (eigenvalues shrunk toward their mean by ``shrink``); ``lw``: within-class whitening, then the leading
    between-class directions (Radenovic et al.)."""
    x = F.normalize(x.double(), dim=1)
    mu = x.mean(0)
    xc = x - mu
    c = x.shape[1]

    def inv_sqrt(cov: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh(cov)
        vals = (1 - shrink) * vals.clamp(min=0) + shrink * vals.clamp(min=0).mean()
        return vecs @ torch.diag(vals.rsqrt()) @ vecs.T, vals, vecs

    if kind == "pca":
        cov = xc.T @ xc / len(x)
        vals, vecs = torch.linalg.eigh(cov)
        vals, vecs = vals.flip(0)[:dim], vecs.flip(1)[:, :dim]
        vals = (1 - shrink) * vals + shrink * vals.mean()
        return mu.float(), (vecs / vals.sqrt()).float()
    ys = torch.as_tensor(y)
    means = torch.stack([x[ys == k].mean(0) for k in np.unique(y)])
    within = torch.zeros(c, c, dtype=torch.float64)
    for i, k in enumerate(np.unique(y)):
        d = x[ys == k] - means[i]
        within += d.T @ d
    within /= len(x)
    p1, _, _ = inv_sqrt(within)
    between = (means - mu) @ p1
    cov_b = between.T @ between / len(means)
    vals, vecs = torch.linalg.eigh(cov_b)
    return mu.float(), (p1 @ vecs.flip(1)[:, :dim]).float()


def project(feats: dict[str, torch.Tensor], index, mu, proj) -> torch.Tensor:
    return multi_view([(F.normalize(f[index], dim=1) - mu) @ proj for f in feats.values()])


def closed_form(kind: str, dim: int, ptrain, ytrain, fit, val, ptest, ytest, shrink: float) -> dict:
    x = torch.cat([f[fit] for f in ptrain.values()])
    y = np.concatenate([ytrain[fit]] * len(ptrain))
    mu, proj = whitening(x, y, dim, kind, shrink)
    out = {"val": score(project(ptrain, val, mu, proj), ytrain[val]),
           "test": score(project(ptest, np.arange(len(ytest)), mu, proj), ytest), "shrink": shrink}
    # What the preset would ship: the same setting refitted on every training class (fit + validation).
    mu, proj = whitening(torch.cat([f for f in ptrain.values()]), np.concatenate([ytrain] * len(ptrain)), dim, kind,
                         shrink)
    out["test_refit_all"] = score(project(ptest, np.arange(len(ytest)), mu, proj), ytest)
    return out


def closed_form_variant(kind: str, dim: int, shrink: float, ptrain, ytrain, fit, val, ptest, ytest) -> dict:
    """lwview (one whitening per view) or lwavg (one whitening of the four-view mean); test also refitted on all."""
    def fitted(index):
        if kind == "lwview":
            return {v: whitening(f[index], ytrain[index], dim, "lw", shrink) for v, f in ptrain.items()}
        return whitening(multi_view([f[index] for f in ptrain.values()]), ytrain[index], dim, "lw", shrink)

    def apply(w, feats, index):
        if kind == "lwview":
            return multi_view([(F.normalize(f[index], dim=1) - w[v][0]) @ w[v][1] for v, f in feats.items()])
        mu, proj = w
        return (F.normalize(multi_view([f[index] for f in feats.values()]), dim=1) - mu) @ proj

    w = fitted(fit)
    out = {"val": score(apply(w, ptrain, val), ytrain[val]), "test": score(apply(w, ptest, np.arange(len(ytest))), ytest),
           "shrink": shrink}
    out["test_refit_all"] = score(apply(fitted(np.arange(len(ytrain))), ptest, np.arange(len(ytest))), ytest)
    return out


def train_projection(loss_name: str, dim: int, ptrain, ytrain, fit, val, ptest, ytest, epochs: int, seed: int,
                     shrink: float = 0.5) -> dict:
    """A linear map on the GeM vectors, initialised from lw-``dim`` (so epoch 0 is the closed form), trained on
    every view of the fit images with a pml loss; epoch chosen on validation R@1."""
    classes, targets = np.unique(ytrain[fit], return_inverse=True)
    x = torch.cat([F.normalize(f[fit], dim=1) for f in ptrain.values()])
    t = np.concatenate([targets] * len(ptrain))
    mu, proj = whitening(x, np.concatenate([ytrain[fit]] * len(ptrain)), dim, "lw", shrink)
    lin = nn.Linear(x.shape[1], dim, bias=False)
    with torch.no_grad():
        lin.weight.copy_(proj.T)
    torch.manual_seed(seed)
    loss_fn = make_loss(loss_name, len(classes), dim)
    params = [{"params": lin.parameters(), "lr": 1e-4}]
    if list(loss_fn.parameters()):
        params.append({"params": loss_fn.parameters(), "lr": 1e-2})
    opt = torch.optim.AdamW(params, weight_decay=1e-4)

    def emb(feats, index):
        with torch.no_grad():
            return multi_view([lin(F.normalize(f[index], dim=1) - mu) for f in feats.values()])

    history = [{"epoch": 0, **score(emb(ptrain, val), ytrain[val])}]
    best = (history[0]["recall@1"], 0, copy.deepcopy(lin.state_dict()))
    steps = len(x) // 128
    for epoch in range(epochs):
        for b in balanced_batches(t, 4, 128, steps, seed * 1_000_003 + epoch):
            loss = loss_fn(lin(x[b] - mu), torch.as_tensor(t[b]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append({"epoch": epoch + 1, **score(emb(ptrain, val), ytrain[val])})
        if history[-1]["recall@1"] > best[0]:
            best = (history[-1]["recall@1"], epoch + 1, copy.deepcopy(lin.state_dict()))
    lin.load_state_dict(best[2])
    return {"chosen": best[1], "history": history, "val": history[best[1]],
            "test": score(emb(ptest, np.arange(len(ytest))), ytest)}


def library_path(model, train, fit, val, test, epochs: int, seed: int) -> dict:
    """frpt-w: what ``python -m frpt train --preset compact --whitening`` does, stopped before the refit on every
    training class (so the validation figures stay clean)."""
    from dataclasses import replace

    from frpt.models import FRPT

    torch.manual_seed(seed)
    m = FRPT(replace(model.config, whitening=True), model.backbone).eval()
    m.prompt.load_state_dict(model.prompt.state_dict())  # the checkpoint's prompt (its crops are the cached views)
    cfg = replace(train_config("compact"), epochs=epochs, seed=seed)
    history = train_head(m, train, fit, cfg, epochs, val=val, progress=False)
    chosen = choose_whitening(m, train, fit, val)
    if chosen["shrink"] is not None:
        m.head.whitening.fit(*_head_vectors(m, train.maps, fit, train.labels), chosen["shrink"])
    return {"chosen": max(history, key=lambda r: (r["recall@1"], -r["epoch"]))["epoch"], "shrink": chosen["shrink"],
            "whitening_validation": chosen["scores"],
            "val": score(embed_cached(m, train.maps, val), train.labels[val]),
            "test": score(embed_cached(m, test.maps, np.arange(len(test.labels))), test.labels)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--feature-cache", required=True)
    ap.add_argument("--root", default="../shared/data/CUB_200_2011")
    ap.add_argument("--settings", default="")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/head-sweep.json")
    args = ap.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.checkpoint)
    size = model.config.input_size
    tf = build_transform(size, train=False)
    views = model.config.view_list
    train = cache_split(model, build_dataset("cub", "train", root=args.root, transform=tf), views, args.feature_cache,
                        "train", progress=False)
    test = cache_split(model, build_dataset("cub", "test", root=args.root, transform=tf), views, args.feature_cache,
                       "test", progress=False)
    fit, val = validation_split(train.labels, train_config("compact").val_fraction)
    ptrain, ptest = pooled(train.maps), pooled(test.maps)
    default = ["dpp+pt", "cah-ce", "cah-ms", "cah-pa", "cah-cosface", "cah-ce-drop", "pca-256", "pca-512",
               "lw-128", "lw-256", "lw-512", "lin-pa-256", "lin-ms-256"]
    names = [s for s in args.settings.split(",") if s] or default
    out_path = Path(args.out)
    records = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name in names:
        started = time.perf_counter()
        if name == "dpp+pt":
            r = {"val": score(multi_view([f[val] for f in ptrain.values()]), train.labels[val]),
                 "test": score(multi_view(list(ptest.values())), test.labels)}
        elif name.startswith("cah-"):
            loss = name.split("-")[1]
            drop = name.endswith("-drop")
            r = train_map_head(loss, train, fit, val, test, args.epochs, args.seed,
                               dropout=0.2 if drop else 0.0, open_gate_decay=1e-3 if drop else 0.0)
        elif name.split("-")[0] in ("pca", "lw"):
            kind, *rest = name.split("-")
            shrink = float(rest[1]) if len(rest) > 1 else 0.1
            r = closed_form(kind, int(rest[0]), ptrain, train.labels, fit, val, ptest, test.labels, shrink)
        elif name.split("-")[0] in ("lwview", "lwavg"):
            kind, dim, *rest = name.split("-")
            r = closed_form_variant(kind, int(dim), float(rest[0]) if rest else 0.1, ptrain, train.labels, fit, val,
                                    ptest, test.labels)
        elif name.startswith("lin-"):
            _, loss, dim = name.split("-")
            r = train_projection(loss, int(dim), ptrain, train.labels, fit, val, ptest, test.labels, args.epochs,
                                 args.seed)
        elif name == "frpt-w":
            r = library_path(model, train, fit, val, test, args.epochs, args.seed)
        else:
            raise SystemExit(f"unknown setting {name}")
        r["seconds"] = round(time.perf_counter() - started, 1)
        records[name] = r
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(records, indent=1))
        refit = r.get("test_refit_all")
        print(f"{name:14s} val R@1 {100 * r['val']['recall@1']:.1f} MAP@R {100 * r['val']['map@r']:.1f} | test R@1 "
              f"{100 * r['test']['recall@1']:.1f} MAP@R {100 * r['test']['map@r']:.1f} | epoch {r.get('chosen', '-')} "
              + (f"| refit on all: {100 * refit['recall@1']:.1f} / {100 * refit['map@r']:.1f} " if refit else "")
              + f"| {r['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
