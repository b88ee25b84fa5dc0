"""The built-in demo: small checkpoints trained on the ``synthetic`` set, shipped in ``assets/demo/``.

``python -m frpt.demo --rebuild`` reproduces them (about 5 minutes on 2 CPU cores): the paper preset on the
packaged ImageNet ``efficientnet_lite0`` at 128 px, trained with :func:`frpt.training.train`, plus the two
comparison rows the app's Fig. 4 view needs: ``pt`` (frozen backbone, nothing trained) and ``no-cah``
(DPP + PT, Table 1's "without CAH" row). Only learned tensors are stored (no optimiser state), so all three
fit in about 2.5 MB. A gallery cache is written beside each on first use (``gallery/``, not shipped).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_card, save_checkpoint
from .config import model_config, train_config
from .data import build_dataset, build_transform
from .evaluation import evaluate
from .models import build_model

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
INPUT_SIZE = 128
# name -> (variant, epochs); the paper's step schedule does not decay this early.
# name -> (variant, epochs, saliency bound). The no-cah row is bounded: unbounded, its DPP collapsed within the 2
# epochs (R@1 0.092, every image read from one point), and a collapsed checkpoint shows nothing in the Fig. 4 view.
DEMOS: dict[str, tuple[str, int, float]] = {"frpt": ("frpt", 2, 0.0), "no-cah": ("dpp+pt", 2, 2.0), "pt": ("pt", 0, 0.0)}
LR = 0.05
# The DPP learns at 2e-4 x LR: at the preset's 1.0 its saliency turns one-hot within tens of steps and every
# image collapses to a point; even at 2e-4 it collapses after ~4 epochs here, so the demo stops at 2 (its no-cah
# row collapses within them). Training the demo with --saliency-bound 2 as well was tried: no collapse, but neither
# row then beat the untrained model on the synthetic set (bench/RESULTS.md, "DPP collapse").
PROMPT_LR_SCALE = 2e-4
SEED = 0
DATASET = {"name": "synthetic", "root": None}
REBUILD_COMMAND = "python -m frpt.demo --rebuild"


def demo_checkpoint_dir(name: str = "frpt") -> Path:
    """Folder of the shipped demo checkpoint ``name`` (one of :data:`DEMOS`)."""
    if name not in DEMOS:
        raise KeyError(f"unknown demo checkpoint {name!r}; choose one of {', '.join(DEMOS)}")
    return ASSETS / name


def available_demos() -> dict[str, Path]:
    """The demo checkpoints present on disk, by name."""
    return {n: demo_checkpoint_dir(n) for n in DEMOS if (demo_checkpoint_dir(n) / "card.json").is_file()}


def bundled_cub_checkpoints() -> dict[str, Path]:
    """CUB-200-2011 checkpoints shipped in ``assets/cub/`` (see bench/RESULTS.md), by name ``cub/<folder>``.
    Exploring them needs the user's own CUB copy; the images are never shipped."""
    folder = ASSETS.parent / "cub"
    if not folder.is_dir():
        return {}
    return {f"cub/{p.name}": p for p in sorted(folder.iterdir()) if (p / "card.json").is_file()}


def named_checkpoints() -> dict[str, Path]:
    """The checkpoints the app offers by name: the synthetic demos, then the shipped CUB ones (``cub/...``)."""
    return {**available_demos(), **bundled_cub_checkpoints()}


def _demo_model(variant: str, num_classes: int, saliency_bound: float = 0.0):
    torch.manual_seed(SEED)
    return build_model(model_config("paper", variant, num_classes=num_classes, input_size=INPUT_SIZE,
                                    saliency_bound=saliency_bound))


def build_demo(name: str, *, progress: bool = True) -> dict[str, Any]:
    """Train demo ``name`` in a scratch folder, then store its learned tensors, card and log in assets/."""
    variant, epochs, bound = DEMOS[name]
    transform = build_transform(INPUT_SIZE, train=False)
    train_set = build_dataset("synthetic", "train", transform=build_transform(INPUT_SIZE, train=True))
    test_set = build_dataset("synthetic", "test", transform=transform)
    cfg = train_config("paper", epochs=epochs, lr=LR, seed=SEED, batch_size=32, prompt_lr_scale=PROMPT_LR_SCALE)
    model = _demo_model(variant, len(train_set.classes), bound)
    from .training import LOG, train

    with tempfile.TemporaryDirectory(prefix=f"frpt-demo-{name}-") as tmp:
        card = train(model, train_set, cfg, tmp, classes=list(train_set.classes), dataset_info=DATASET,
                     test_set=test_set, progress=progress)
        metrics = dict(card["metrics"])
        if variant != "pt":
            untrained = _demo_model(variant, len(train_set.classes), bound)
            metrics["untrained_recall@1"] = evaluate(untrained, test_set, progress=False)["recall@1"]
        dest = demo_checkpoint_dir(name)
        if dest.exists():
            shutil.rmtree(dest)
        save_checkpoint(dest, model, classes=list(train_set.classes), dataset=DATASET, train=cfg,
                        epoch=card["epoch"], metrics=metrics, extra={"demo": name, "rebuild": REBUILD_COMMAND})
        if (Path(tmp) / LOG).is_file():
            shutil.copy(Path(tmp) / LOG, dest / LOG)
    return load_card(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frpt.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="retrain the demo checkpoints into assets/demo/")
    parser.add_argument("--only", choices=tuple(DEMOS), action="append", help="rebuild only these demos")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.rebuild:
        print(json.dumps({n: str(p) for n, p in available_demos().items()}))
        return 0
    results = {}
    for name in args.only or DEMOS:
        card = build_demo(name, progress=not args.quiet)
        results[name] = {"epoch": card["epoch"], **card["metrics"]}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
