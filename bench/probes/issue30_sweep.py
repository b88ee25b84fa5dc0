"""Issue 30: the queued CAH variants, each followed by the whitening, two scales as views, and a part zoom.

Runs on the feature cache of one compact checkpoint (its prompt's crops), built here with the engine and precision
``frpt train`` / ``frpt evaluate`` use (``--precision auto``), so the cached views are the ones a live query gets.
As in bench/probes/compact_head_sweep.py (whose heads and losses this reuses), everything is fitted on the 80 fit
classes, chosen on the 20 validation classes (frpt.compact.validation_split), and the test split scored once;
"refit" refits the whitening on all 100 training classes, as the preset ships it.
``record`` appends the ``--settings`` records of ``--out`` to bench/results.json (profile ``compact-probe``).

Modes:
  cache     build the checkpoint's cache at ``--input-size`` (default: the checkpoint's); with ``--base-cache`` the
            prompt-independent orig/flip folders of another cache at that size are linked, not recomputed
  heads     ``--settings`` (comma-separated):
              base           the checkpoint's CAH + GeM of the four views, then the within-class whitening (the
                             shipped recipe's embedding, shrinkage re-chosen here)
              cah-LOSS       compact_head_sweep's CAH trained with LOSS (ce, ms, pa, cosface, ce-drop), epoch on
                             validation, then the whitening
              in-gem         GeM of the instance-normalised map alone (CAH's closed gate), then the whitening
              scales         the four views at --input-size and the four at --second-size (the same prompt's crops)
                             averaged, then the whitening
              scales-crop    the crop views at --input-size with orig/flip at --second-size, then the whitening
                             (base, scales, scales-crop and zoom pool every view with the checkpoint's CAH + GeM)
              zoom           a part zoom: a square crop of half-side S centred on the peak of the prompt's saliency
                             (its mean at temperature 0.25), two more views (zoom, zoom-flip); S chosen on validation
                             among ``--zoom-halves`` (six views, unwhitened), then every image's six views whitened
                             (the library's zoom views since; ``frpt train --views ...,zoom,zoom-flip`` chooses S
                             as this does, before the head)

Each whitening's shrinkage is chosen on validation by R@1 + MAP@R (frpt.compact.choose_whitening's criterion,
"none" kept on a tie). Records go to ``--out`` (one per setting) and a table is printed.

    python bench/probes/issue30_sweep.py cache --checkpoint assets/cub/compact-frpt-288 \\
        --feature-cache runs/issue30/features-288
    python bench/probes/issue30_sweep.py heads --checkpoint assets/cub/compact-frpt-288 \\
        --feature-cache runs/issue30/features-288 --settings base,cah-ms
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "probes"))

import compact_head_sweep as chs  # noqa: E402
from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.compact import WHITENING_SHRINKS, image_subset, validation_split  # noqa: E402
from frpt.config import train_config  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.feature_cache import CachedSplit, cache_split  # noqa: E402
from frpt.metrics import map_at_r, recall_at_k  # noqa: E402
from frpt.models import FRPT  # noqa: E402
from frpt.models.head import WithinClassWhitening  # noqa: E402

Vectors = dict[str, torch.Tensor]  # per view, (N, C) pooled vectors of a whole split
Pooling = Callable[[torch.Tensor], torch.Tensor]  # a map -> vector head in eval mode


def load_split(model: FRPT, root: str, cache: str, split: str, views: tuple[str, ...] | None = None,
               progress: bool = False) -> CachedSplit:
    """The cached maps of ``split`` (computed where missing, at the live path's engine and precision)."""
    dataset = build_dataset("cub", split, root=root, transform=build_transform(model.config.input_size, train=False))
    return cache_split(model, dataset, views or model.config.view_list, cache, split, precision="auto",
                       progress=progress)


def link_base_views(base: Path, cache: Path) -> None:
    """Link the prompt-independent views (orig, flip: keyed by backbone, size and images only) and the labels of
    ``base`` into ``cache``, so only the crop views of another prompt are computed."""
    for split in ("train", "test"):
        (cache / split).mkdir(parents=True, exist_ok=True)
        for name in ("orig", "flip", "labels.npy", "plan.json"):
            target, link = (base / split / name).resolve(), cache / split / name
            if target.exists() and not link.exists():
                link.symlink_to(target)


@torch.no_grad()
def pooled_with(fn: Pooling, maps: dict[str, np.ndarray], batch: int = 512) -> Vectors:
    """``fn`` (a map -> vector head, in eval mode) of every cached map, per view."""
    return {v: torch.cat([fn(torch.from_numpy(np.asarray(m[s:s + batch], dtype=np.float32)))
                          for s in range(0, len(m), batch)]) for v, m in maps.items()}


def full_score(emb: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """R@1, 2, 4, 8 and MAP@R (a results.json row's figures)."""
    return {**recall_at_k(emb, labels, (1, 2, 4, 8)), "map@r": map_at_r(emb, labels)}


def whiten_embed(w: WithinClassWhitening | None, vecs: Vectors, index: np.ndarray) -> torch.Tensor:
    return chs.multi_view([w(f[index]) if w is not None else f[index] for f in vecs.values()])


def fit_whitening(vecs: Vectors, labels: np.ndarray, index: np.ndarray, shrink: float) -> WithinClassWhitening:
    """The library's whitening fitted to every view of images ``index`` (as frpt.compact._head_vectors stacks)."""
    w = WithinClassWhitening(next(iter(vecs.values())).shape[1])
    w.fit(torch.cat([f[index] for f in vecs.values()]), torch.as_tensor(np.tile(labels[index], len(vecs))), shrink)
    return w


def whitened(vtrain: Vectors, ytrain: np.ndarray, vtest: Vectors, ytest: np.ndarray, fit: np.ndarray,
             val: np.ndarray) -> dict:
    """Shrinkage chosen on validation (fit on the fit classes), test scored with that whitening fitted on the fit
    classes and refitted on all training classes; also the unwhitened figures."""
    scores = {"none": chs.score(whiten_embed(None, vtrain, val), ytrain[val])}
    for s in WHITENING_SHRINKS:
        scores[str(s)] = chs.score(whiten_embed(fit_whitening(vtrain, ytrain, fit, s), vtrain, val), ytrain[val])
    best = max(scores, key=lambda k: (scores[k]["recall@1"] + scores[k]["map@r"], k == "none"))
    every = np.arange(len(ytest))
    out = {"shrink": None if best == "none" else float(best), "whitening_validation": scores, "val": scores[best],
           "unwhitened": {"val": scores["none"], "test": full_score(whiten_embed(None, vtest, every), ytest)}}
    if best == "none":
        out["test"] = out["test_refit_all"] = out["unwhitened"]["test"]
    else:
        out["test"] = full_score(whiten_embed(fit_whitening(vtrain, ytrain, fit, float(best)), vtest, every), ytest)
        out["test_refit_all"] = full_score(whiten_embed(fit_whitening(vtrain, ytrain, np.arange(len(ytrain)),
                                                                     float(best)), vtest, every), ytest)
    return out


class _Recorded(chs.MapHead):
    """compact_head_sweep.MapHead that remembers its last instance, so the head train_map_head fits (its best
    validation epoch loaded) can be read back for the whitening."""

    last: "_Recorded | None" = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        type(self).last = self


def cah_setting(loss: str, train: CachedSplit, test: CachedSplit, fit: np.ndarray, val: np.ndarray, epochs: int,
                seed: int) -> dict:
    """compact_head_sweep's CAH run (``ce``, ``ms``, ``pa``, ``cosface``, ``ce-drop``), then the whitening of its
    pooled vectors."""
    drop = loss.endswith("-drop")
    chs.MapHead = _Recorded
    r = chs.train_map_head(loss.removesuffix("-drop"), train, fit, val, test, epochs, seed,
                           dropout=0.2 if drop else 0.0, open_gate_decay=1e-3 if drop else 0.0)
    head = _Recorded.last.eval()
    w = whitened(pooled_with(head, train.maps), train.labels, pooled_with(head, test.maps), test.labels, fit, val)
    return {"chosen": r["chosen"], "history": r["history"], "head_only": {"val": r["val"], "test": r["test"]}, **w}


def in_gem(x: torch.Tensor) -> torch.Tensor:
    """GeM of the instance-normalised map: what CAH passes for a fully closed gate."""
    return chs.GEM(F.instance_norm(x))


def concat_views(a: Vectors, b: Vectors, suffix: str) -> Vectors:
    return {**a, **{f"{v}@{suffix}": f for v, f in b.items()}}


def zoom_maps(model: FRPT, root: str, cache: str, split: str, half: float, index: np.ndarray | None = None
              ) -> dict[str, np.ndarray]:
    """The library's zoom and zoom-flip maps (:meth:`frpt.models.crop.CropPrompt.zoom_box`, half-side ``half``) of
    ``split`` (or of its images ``index``, cached as split ``<split>-<n>``)."""
    dataset = build_dataset("cub", split, root=root, transform=build_transform(model.config.input_size, train=False))
    name = split
    if index is not None:
        dataset, name = image_subset(dataset, index), f"{split}-{len(index)}"
    saved, model.config = model.config, replace(model.config, zoom_half=half)
    try:
        return cache_split(model, dataset, ("zoom", "zoom-flip"), cache, name, precision="auto", progress=False).maps
    finally:
        model.config = saved


def zoom_setting(model: FRPT, pool: Pooling, args: argparse.Namespace, train: CachedSplit, test: CachedSplit,
                 fit: np.ndarray, val: np.ndarray, halves: list[float]) -> dict:
    """The part zoom's half-side chosen on validation (six views pooled by ``pool``, unwhitened, R@1 + MAP@R), then
    the six views of every image whitened (with no zoom chosen: the four views', as ``base``)."""
    base = {v: m[val] for v, m in train.maps.items()}
    choice = {"none": chs.score(chs.multi_view(list(pooled_with(pool, base).values())), train.labels[val])}
    for half in halves:
        views = {**base, **zoom_maps(model, args.root, args.feature_cache, "train", half, val)}
        choice[str(half)] = chs.score(chs.multi_view(list(pooled_with(pool, views).values())), train.labels[val])
    best = max(choice, key=lambda k: (choice[k]["recall@1"] + choice[k]["map@r"], k == "none"))
    tr, te = dict(train.maps), dict(test.maps)
    if best != "none":
        tr.update(zoom_maps(model, args.root, args.feature_cache, "train", float(best)))
        te.update(zoom_maps(model, args.root, args.feature_cache, "test", float(best)))
    return {"zoom_validation": choice, "half": None if best == "none" else float(best),
            **whitened(pooled_with(pool, tr), train.labels, pooled_with(pool, te), test.labels, fit, val)}


def record_rows(args: argparse.Namespace, model: FRPT) -> None:
    """Append the ``--settings`` records of ``--out`` to bench/results.json as rows (the test figures with the
    whitening refitted on every training class, as the preset ships it), each with the command that reruns it."""
    import datetime
    import subprocess

    from frpt.fileio import atomic_write_text

    records = json.loads(Path(args.out).read_text())
    results = REPO / "bench" / "results.json"
    rows = json.loads(results.read_text())
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", "bench/probes/issue30_sweep.py"],
                            capture_output=True, text=True, cwd=REPO).stdout  # the script's own last commit
    learned = sum(p.numel() for n, p in model.named_parameters() if model.is_learned(n))
    for name in [s for s in args.settings.split(",") if s]:
        r = records[name]
        second = f" --second-cache {args.second_cache}" if name.startswith("scales") else ""
        rows.append({
            "dataset": "cub", "preset": "compact", "variant": "frpt", "backbone": model.config.backbone,
            "profile": "compact-probe", "setting": name, **r["test_refit_all"], "learned_params": learned,
            "train_seconds": r["seconds"], "epochs": int(r.get("chosen", 0)), "input_size": model.config.input_size,
            "whitening": r["shrink"] is not None, "whitening_shrink": r["shrink"],
            "val_recall@1": r["val"]["recall@1"], "val_map@r": r["val"]["map@r"], "val_classes": 20,
            "test_whitening_fit_classes_only": r["test"], "commit": commit.strip(),
            "command": f"python bench/probes/issue30_sweep.py heads --checkpoint {args.checkpoint} --feature-cache "
                       f"{args.feature_cache}{second} --settings {name}",
            "machine": f"x86_64 2 CPU (Intel Xeon, AVX-512 + bf16 + AMX), torch threads {args.threads}, shared with "
                       "other work",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d UTC"),
            "checkpoint": args.checkpoint, "crop_geometry": "fp32",
            "note": "issue 30 probe on the checkpoint's cached views: fitted on the 80 fit classes, chosen on the 20 "
                    "validation classes, whitening refitted on all 100 training classes; learned_params are the "
                    "checkpoint's"})
    atomic_write_text(results, json.dumps(rows, indent=1))


def model_at(checkpoint: str, size: int | None) -> FRPT:
    """The checkpoint's model, its input size replaced by ``size`` (its prompt, head and views kept)."""
    model, _ = load_checkpoint(checkpoint)
    if size and size != model.config.input_size:
        model.config = replace(model.config, input_size=size)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=("cache", "heads", "record"))
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--feature-cache", required=True)
    ap.add_argument("--input-size", type=int, default=None, help="default: the checkpoint's")
    ap.add_argument("--base-cache", default=None, help="cache mode: link orig/flip (and labels) from this cache")
    ap.add_argument("--second-size", type=int, default=224)
    ap.add_argument("--second-cache", default=None, help="the cache at --second-size (scales settings)")
    ap.add_argument("--zoom-halves", default="0.2,0.25,0.3", help="zoom setting: half-sides tried on validation")
    ap.add_argument("--root", default="../shared/data/CUB_200_2011")
    ap.add_argument("--settings", default="base")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/issue30/sweep.json")
    args = ap.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(args.threads)
    model = model_at(args.checkpoint, args.input_size)
    if args.mode == "record":
        record_rows(args, model)
        return
    if args.mode == "cache":
        if args.base_cache:
            link_base_views(Path(args.base_cache), Path(args.feature_cache))
        for split in ("train", "test"):
            load_split(model, args.root, args.feature_cache, split, progress=True)
        return
    train = load_split(model, args.root, args.feature_cache, "train")
    test = load_split(model, args.root, args.feature_cache, "test")
    fit, val = validation_split(train.labels, train_config("compact").val_fraction)
    shipped = lambda x: model.head.features(model.cah(x))  # noqa: E731  (the checkpoint's CAH + GeM)
    out_path = Path(args.out)
    records = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name in [s for s in args.settings.split(",") if s]:
        started = time.perf_counter()
        if name == "base":
            r = whitened(pooled_with(shipped, train.maps), train.labels, pooled_with(shipped, test.maps), test.labels,
                         fit, val)
        elif name.startswith("cah-"):
            r = cah_setting(name.removeprefix("cah-"), train, test, fit, val, args.epochs, args.seed)
        elif name == "in-gem":
            r = whitened(pooled_with(in_gem, train.maps), train.labels, pooled_with(in_gem, test.maps), test.labels,
                         fit, val)
        elif name == "zoom":
            r = zoom_setting(model, shipped, args, train, test, fit, val,
                             [float(h) for h in args.zoom_halves.split(",")])
        elif name in ("scales", "scales-crop"):
            small = model_at(args.checkpoint, args.second_size)
            views = small.config.view_list if name == "scales" else ("orig", "flip")
            strain = load_split(small, args.root, args.second_cache, "train", views)
            stest = load_split(small, args.root, args.second_cache, "test", views)
            keep = (lambda v: True) if name == "scales" else (lambda v: v.startswith("crop"))
            big_train = pooled_with(shipped, {v: m for v, m in train.maps.items() if keep(v)})
            big_test = pooled_with(shipped, {v: m for v, m in test.maps.items() if keep(v)})
            tag = str(args.second_size)
            r = whitened(concat_views(big_train, pooled_with(shipped, strain.maps), tag), train.labels,
                         concat_views(big_test, pooled_with(shipped, stest.maps), tag), test.labels, fit, val)
        else:
            raise SystemExit(f"unknown setting {name}")
        r["seconds"] = round(time.perf_counter() - started, 1)
        records[name] = r
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(records, indent=1))
        f = lambda m: f"{100 * m['recall@1']:.2f} / {100 * m['map@r']:.2f}"  # noqa: E731
        print(f"{name:12s} val {f(r['val'])} | test {f(r['test'])} | refit {f(r['test_refit_all'])} | shrink "
              f"{r['shrink']} | epoch {r.get('chosen', '-')} | {r['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
