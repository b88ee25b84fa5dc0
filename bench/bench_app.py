"""App latency: picking a new image -> its warped view (run_prompt + the prompt explorer's panels), and UMAP time.

    python bench/bench_app.py [--checkpoint DIR] [--images 20] [--umap-points 5924] [--umap-dim 1280]
    python bench/bench_app.py --first-view --checkpoint assets/cub/compact-frpt --dataset cub \
                              --root ../shared/data/CUB_200_2011

Uses the demo checkpoint by default (pass --size to resample the inputs). UMAP runs on random points of the CUB
test-split size unless --umap-from-gallery points at a stored gallery .npz.

--first-view times what the Embedding space page computes on a checkpoint's first visit, on a copy of the
checkpoint without its stored gallery (the library calls the page makes: the test split's gallery embeddings with
the app's precision, then the 2,000-point UMAP maps before and after the head, then the nearest-neighbour hits),
and then the warm visit (reading both back from disk). The Retrieval page's first visit is the gallery step alone.
--stored keeps what the checkpoint folder already holds (the gallery and maps `frpt train` stores from its final
test evaluation, or `frpt embed`'s): the first visit of a checkpoint trained or embedded on this machine.
--warp-gallery N times the Warp gallery's computation for a sample of N test images (the prompt on each, the
warp's measures, the side-by-side pictures): the first sample (the process's first engine use; the compiled model
comes from the disk cache when there is one) and three more samples.
Prints one JSON line.

    python bench/bench_app.py --warp-gallery 48 --checkpoint assets/cub/compact-frpt-288 --dataset cub \
                              --root ../shared/data/CUB_200_2011
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    from frpt.checkpoint import load_checkpoint
    from frpt.data import build_dataset, build_transform
    from frpt.demo import demo_checkpoint_dir
    from frpt.projection import procrustes_align, umap_2d
    from frpt.ui.logic import prompt_panels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(demo_checkpoint_dir("frpt")))
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--size", type=int, default=None, help="input size (default: the checkpoint's)")
    p.add_argument("--umap-points", type=int, default=5924, help="0: skip UMAP")
    p.add_argument("--umap-dim", type=int, default=1280)
    p.add_argument("--umap-from-gallery", help="a gallery .npz (uses its 'after' embeddings)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--first-view", action="store_true", help="time a checkpoint's first and warm Embedding space")
    p.add_argument("--stored", action="store_true",
                   help="--first-view on the checkpoint as it is, with the gallery and maps it stores")
    p.add_argument("--warp-gallery", type=int, default=0, metavar="N", help="time the Warp gallery for N images")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warp_gallery:
        print(json.dumps(warp_gallery(args.checkpoint, args.dataset, args.root, args.warp_gallery)))
        return
    if args.first_view:
        print(json.dumps(first_view(args.checkpoint, args.dataset, args.root, args.stored)))
        return

    model, card = load_checkpoint(args.checkpoint)
    model.requires_grad_(False)
    size = args.size or card["input_size"]
    ds = build_dataset("synthetic", "test", transform=build_transform(size, train=False))
    prompt_s, panel_s = [], []
    prompt_panels(model, ds[0][0], ds.box(0))  # warm-up (first call allocates)
    for i in range(1, args.images + 1):
        t0 = time.perf_counter()
        image = ds[i][0]  # load + transform, as picking an image does
        with torch.no_grad():
            model.run_prompt(image[None])
        prompt_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prompt_panels(model, ds[i][0], None)
        panel_s.append(time.perf_counter() - t0)

    result = {
        "checkpoint": card.get("demo") or args.checkpoint, "variant": card["variant"], "input_size": size,
        "pick_to_warped_s_median": round(statistics.median(prompt_s), 4),
        "pick_to_warped_s_max": round(max(prompt_s), 4),
        "prompt_panels_s_median": round(statistics.median(panel_s), 4),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }
    if args.umap_points == 0 and not args.umap_from_gallery:  # latency only
        print(json.dumps(result))
        return
    if args.umap_from_gallery:
        with np.load(args.umap_from_gallery) as data:
            x = data["after"]
        source = args.umap_from_gallery
    else:
        x = np.random.default_rng(0).normal(size=(args.umap_points, args.umap_dim)).astype(np.float32)
        source = "random"
    t0 = time.perf_counter()
    import umap  # noqa: F401
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = umap_2d(x, seed=0)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    procrustes_align(umap_2d(x[:, ::-1].copy(), seed=0), a)
    second_s = time.perf_counter() - t0

    print(json.dumps({
        **result, "umap_points": int(x.shape[0]), "umap_dim": int(x.shape[1]), "umap_source": source,
        "umap_import_s": round(import_s, 2), "umap_first_fit_s": round(first_s, 2),
        "umap_second_fit_plus_procrustes_s": round(second_s, 2),
    }))


def warp_gallery(checkpoint: str, dataset: str, root: str | None, n: int) -> dict:
    """Seconds of the Warp gallery page's computation (frpt.warp_gallery) for four samples of ``n`` test images."""
    from frpt import warp_gallery as wg
    from frpt.checkpoint import load_checkpoint
    from frpt.data import build_dataset, build_transform

    t0 = time.perf_counter()
    model, card = load_checkpoint(checkpoint)
    ds = build_dataset(dataset, "test", root=root, transform=build_transform(card["input_size"], train=False))
    load_s = time.perf_counter() - t0
    records_s, pictures_s = [], []
    for seed in range(4):
        t0 = time.perf_counter()
        records = wg.warp_records(model, ds, wg.pick_indices(ds, n, seed=seed))
        records_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        [wg.pair_image(r) for r in records]
        pictures_s.append(time.perf_counter() - t0)
    return {"checkpoint": checkpoint, "dataset": dataset, "images": n, "input_size": card["input_size"],
            "load_s": round(load_s, 2), "first_sample_s": round(records_s[0], 3),
            "next_samples_s": [round(s, 3) for s in records_s[1:]], "pictures_s": round(statistics.median(pictures_s), 3),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


def first_view(checkpoint: str, dataset: str, root: str | None, stored: bool = False) -> dict:
    import shutil
    import tempfile

    from frpt.checkpoint import load_checkpoint
    from frpt.data import build_dataset, build_transform
    from frpt.gallery import gallery_embeddings, load_gallery
    from frpt.metrics import nearest_neighbour_hits
    from frpt.projection import DEFAULT_MAP_POINTS, gallery_umap, load_gallery_map, umap_file

    with tempfile.TemporaryDirectory(prefix="frpt-first-view-") as tmp:
        ckpt = Path(tmp) / "ckpt"
        shutil.copytree(checkpoint, ckpt, ignore=None if stored else shutil.ignore_patterns("gallery"))
        t0 = time.perf_counter()
        model, card = load_checkpoint(ckpt)
        ds = build_dataset(dataset, "test", root=root, transform=build_transform(card["input_size"], train=False))
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        g = gallery_embeddings(model, card, ds, root=root, progress=False)
        gallery_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        points = DEFAULT_MAP_POINTS if len(g.ids) > DEFAULT_MAP_POINTS else None
        mapped = gallery_umap(g, max_points=points)
        umap_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for x in (g.embeddings.before, g.embeddings.after):  # the page colours the map's points
            nearest_neighbour_hits(x, g.embeddings.labels, mapped.indices)
        hits_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_gallery(g.path)
        load_gallery_map(umap_file(again, points), len(again.ids))
        warm_s = time.perf_counter() - t0
    return {"checkpoint": checkpoint, "stored": stored, "dataset": dataset, "images": len(ds), "input_size": card["input_size"],
            "views": card["model"].get("views", "orig"), "engine": g.engine, "precision": g.precision,
            "load_s": round(load_s, 2), "gallery_s": round(gallery_s, 1), "umap_s": round(umap_s, 1),
            "nn_hits_s": round(hits_s, 2), "first_view_s": round(load_s + gallery_s + umap_s + hits_s, 1),
            "warm_read_s": round(warm_s, 3), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}


if __name__ == "__main__":
    main()
