"""Train the PT+CAH row (frozen backbone, CAH + classifier learned) on cached backbone feature maps.

With a frozen backbone and no augmentation the backbone's final feature map of every image is fixed, so it is
computed once (test transform: resize + centre crop, no random crop/flip/jitter/erasing) and the head is trained
on it with the preset's optimiser and schedule (frpt.training.build_optimizer / lr_at, CE). This differs from
``python -m frpt train --variant pt+cah`` only by the missing augmentation; bench/RESULTS.md labels the row so.
The result is a regular checkpoint (``frpt evaluate --checkpoint`` works on it) and a log.csv.

Example: python bench/probes/cached_head.py --preset paper --input-size 128 --epochs 10 --out runs/ablation/cached
The row is merged into bench/results.json as profile "cached" (``--results ''`` to skip).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ablation  # noqa: E402 - bench/ablation.py: the results.json record format

from frpt.checkpoint import save_checkpoint  # noqa: E402
from frpt.config import model_config, train_config  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.losses import cross_entropy  # noqa: E402
from frpt.metrics import retrieval_metrics  # noqa: E402
from frpt.models import build_model  # noqa: E402
from frpt.training import LOG_FIELDS, build_optimizer, lr_at  # noqa: E402


@torch.no_grad()
def feature_maps(model, dataset, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    maps, labels = [], []
    for images, targets, _ in loader:
        maps.append(model.backbone(model.normalize(images)))
        labels.append(torch.as_tensor(targets))
    return torch.cat(maps), torch.cat(labels)


def cached(path: Path, model, dataset, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if path.is_file():
        z = np.load(path)
        return torch.from_numpy(z["maps"]), torch.from_numpy(z["labels"])
    maps, labels = feature_maps(model, dataset, batch)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, maps=maps.numpy(), labels=labels.numpy())
    tmp.replace(path)
    return maps, labels


def _subset(dataset, n: int):
    sub = torch.utils.data.Subset(dataset, np.linspace(0, len(dataset) - 1, n).astype(int).tolist())
    sub.classes = dataset.classes
    return sub


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=("paper", "official"))
    p.add_argument("--variant", default="pt+cah", choices=("pt+cah",))
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--root", default="../shared/data/CUB_200_2011")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--limit-images", type=int, help="smoke runs: first N images of each split")
    p.add_argument("--results", default=str(ablation.REPO / "bench" / "results.json"),
                   help="results.json to merge the row into ('' to skip)")
    args = p.parse_args(argv)
    command = shlex.join(["python", "bench/probes/cached_head.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tf = build_transform(args.input_size, train=False)
    train_set = build_dataset("cub", "train", root=args.root, transform=tf)
    test_set = build_dataset("cub", "test", root=args.root, transform=tf)
    if args.limit_images:
        n = args.limit_images
        train_set = _subset(train_set, n)
        test_set = _subset(test_set, n)
    cfg = train_config(args.preset, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(model_config(args.preset, args.variant, backbone=args.backbone,
                                     num_classes=len(train_set.classes), input_size=args.input_size)).eval()
    t0 = time.perf_counter()
    tag = f"{args.backbone}-{args.input_size}"
    xtr, ytr = cached(out / f"train-{tag}.npz", model, train_set, 64)
    xte, yte = cached(out / f"test-{tag}.npz", model, test_set, 64)
    cache_s = time.perf_counter() - t0
    optimizer = build_optimizer(model, cfg)
    ckpt = out / f"{args.preset}-{args.variant}-{args.input_size}"
    ipe = len(xtr) // cfg.batch_size
    rows, train_s = [], 0.0
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        model.cah.train(); model.head.train()  # noqa: E702 - the backbone is not run at all
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(xtr), generator=g)
        total = 0.0
        for step in range(ipe):
            lr = lr_at(cfg, epoch, epoch * ipe + step, ipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            _, logits = model.head(model.cah(xtr[idx]))
            loss = cross_entropy(logits, ytr[idx], cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        model.cah.eval(); model.head.eval()  # noqa: E702
        with torch.no_grad():
            emb = torch.cat([model.head(model.cah(xte[i:i + 512]))[0] for i in range(0, len(xte), 512)])
        r1 = retrieval_metrics(emb, yte.numpy(), ks=(1,))["recall@1"]
        secs = time.perf_counter() - started
        train_s += secs
        rows.append({"epoch": epoch + 1, "train_loss": round(total / ipe, 6), "lr": lr, "recall@1": r1,
                     "seconds": round(secs, 3)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    with torch.no_grad():
        emb = torch.cat([model.head(model.cah(xte[i:i + 512]))[0] for i in range(0, len(xte), 512)])
    metrics = retrieval_metrics(emb, yte.numpy())
    save_checkpoint(ckpt, model, classes=list(train_set.classes),
                    dataset={"name": "cub", "root": str(Path(args.root).resolve())}, train=cfg, epoch=cfg.epochs,
                    metrics=metrics)
    with open(ckpt / "log.csv", "w", encoding="utf-8") as fh:
        fh.write(",".join(LOG_FIELDS) + "\n")
        for r in rows:
            fh.write(",".join(str(r[k]) for k in LOG_FIELDS) + "\n")
    print(json.dumps({"checkpoint": str(ckpt), "cache_seconds": round(cache_s, 1), "train_seconds": round(train_s, 1),
                      "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, **metrics}), flush=True)
    if args.results and not args.limit_images:
        ns = argparse.Namespace(backbone=args.backbone, profile="cached", threads=args.threads)
        rec = ablation.record(ns, args.preset, args.variant, metrics, args.input_size, epochs=cfg.epochs,
                              train_seconds=round(train_s, 1), learned=model.parameter_report()["total"]["learned"],
                              command=command, eval_command="(evaluated on the cached test maps by the same command)",
                              eval_seconds=None)
        curve = ablation.REPO / "bench" / "curves" / f"cached-{args.preset}-{args.variant}.csv"
        curve.write_text((ckpt / "log.csv").read_text())
        rec.update(cache_seconds=round(cache_s, 1), lr=cfg.lr, curve=str(curve.relative_to(ablation.REPO)),
                   note="trained on cached frozen feature maps of un-augmented images (test transform); "
                        "train_seconds excludes caching and includes the per-epoch test R@1")
        ablation.merge(Path(args.results), [rec])
    return 0


if __name__ == "__main__":
    sys.exit(main())
