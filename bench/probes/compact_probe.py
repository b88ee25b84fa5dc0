"""Probes of a compact-preset checkpoint on CUB: what each view adds, and where the crop prompt looks.

Views: the checkpoint's embedding recomputed from the test feature cache with subsets of its views (the crop
views removed = the identity-view probe: same head, no prompt), and the frozen maps pooled with GAP and GeM.

Focus, for every test image: the crop box predicted from the cached original map (no backbone pass: the feature cache of
the ablation holds it), then (a) the focus score, the share of the crop view's samples read from inside the bird's
box (the identity view scores the box's area share), (b) the IoU of the crop box with the box, (c) the zoom
(image area / crop area). Boxes are used only here, to score; no row is trained with them.

    python bench/probes/compact_probe.py --checkpoint runs/ablation/compact/frpt/checkpoint \\
        --feature-cache runs/ablation/compact/features
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.data.transforms import transform_box  # noqa: E402
from frpt.compact import embed_cached  # noqa: E402
from frpt.feature_cache import cache_split  # noqa: E402
from frpt.metrics import map_at_r, recall_at_k  # noqa: E402
from frpt.models import GeneralizedMeanPooling  # noqa: E402

VIEW_SETS = (("orig",), ("orig", "flip"), ("crop",), ("crop", "crop-flip"), ("orig", "flip", "crop"),
             ("orig", "flip", "crop", "crop-flip"))


def view_probe(model, test, cache: str) -> list[dict]:
    """R@1/MAP@R of the checkpoint's head on each subset of its views, and of the frozen maps pooled by GAP/GeM."""
    views = model.config.view_list
    cached = cache_split(model, test, views, cache, "test", progress=False)
    index = np.arange(len(cached.labels))
    rows = []

    def score(name: str, emb) -> None:
        r = recall_at_k(emb, cached.labels)
        rows.append({"embedding": name, "recall@1": r["recall@1"], "map@r": map_at_r(emb, cached.labels)})

    orig = torch.from_numpy(np.asarray(cached.maps["orig"], dtype=np.float32))
    score("frozen orig, GAP", orig.mean(dim=(2, 3)))
    score("frozen orig, GeM", GeneralizedMeanPooling()(orig))
    del orig
    for subset in VIEW_SETS:  # the embedding averages whatever views it is given (FRPT.embed_maps)
        if all(v in views for v in subset):
            score("head on " + " + ".join(subset), embed_cached(model, {v: cached.maps[v] for v in subset}, index))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--feature-cache", required=True)
    p.add_argument("--root", default="../shared/data/CUB_200_2011")
    args = p.parse_args(argv)
    model, card = load_checkpoint(args.checkpoint)
    size = card["input_size"]
    test = build_dataset("cub", "test", root=args.root, transform=build_transform(size, train=False))
    maps = cache_split(model, test, ("orig",), args.feature_cache, "test", progress=False).maps["orig"]
    focus, area, iou, zoom = [], [], [], []
    with torch.no_grad():
        for start in range(0, len(test), 256):
            rows = np.arange(start, min(len(test), start + 256))
            saliency = model.prompt.saliency(torch.from_numpy(np.asarray(maps[rows], dtype=np.float32)))
            boxes = model.prompt.box(saliency).numpy()
            for i, (cx, cy, hx, hy) in zip(rows, boxes):
                with Image.open(test.samples[i][0]) as im:
                    x, y, w, h = transform_box(test.box(i), im.size, size)
                gx0, gy0, gx1, gy1 = x / size, y / size, (x + w) / size, (y + h) / size
                px0, py0, px1, py1 = cx - hx, cy - hy, cx + hx, cy + hy
                ix = max(0.0, min(gx1, px1) - max(gx0, px0))
                iy = max(0.0, min(gy1, py1) - max(gy0, py0))
                inter = ix * iy
                crop_area, box_area = (px1 - px0) * (py1 - py0), (gx1 - gx0) * (gy1 - gy0)
                focus.append(inter / crop_area)    # share of the crop view's samples inside the bird's box
                area.append(box_area)              # the same for the identity view
                iou.append(inter / (crop_area + box_area - inter))
                zoom.append(1.0 / crop_area)
    out = {"checkpoint": args.checkpoint, "images": len(focus), "prompt_kept": card.get("compact", {}).get("prompt_kept"),
           "focus_crop": float(np.mean(focus)), "focus_identity": float(np.mean(area)),
           "iou_crop_box": float(np.mean(iou)), "iou_identity": float(np.mean([a for a in area])),
           "zoom_mean": float(np.mean(zoom)), "zoom_max": float(np.max(zoom)),
           "share_zoomed_over_1.1": float(np.mean(np.array(zoom) > 1.1))}
    out["views"] = view_probe(model, test, args.feature_cache)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
