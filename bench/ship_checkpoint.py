"""Ship a trained CUB checkpoint in assets/cub/<name>, with a quick live check the test suite can repeat.

The full test split through the compact preset's four views takes ~15 minutes on 2 cores, too long for CI. So the
card also records the live metrics (``frpt.evaluation.evaluate``, fp32, images through the whole model) on the
first ``--check-classes`` test classes; tests/test_assets.py re-evaluates exactly that subset and compares.

    python bench/ship_checkpoint.py --checkpoint runs/ablation/compact/frpt/checkpoint --name compact-frpt
    python bench/ship_checkpoint.py --checkpoint runs/ablation/compact-efficientnet_lite1-240/frpt-whitening/checkpoint \
        --name compact-frpt-lite1 --half
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frpt.checkpoint import CARD, export_checkpoint, load_card, load_checkpoint  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.evaluation import evaluate  # noqa: E402
from frpt.fileio import atomic_write_text  # noqa: E402


def check_subset(dataset, num_classes: int):
    """The test images of the first ``num_classes`` test classes (dataset order), as a Subset with ``samples``."""
    from torch.utils.data import Subset

    keep = sorted(set(dataset.targets))[:num_classes]
    index = [i for i, y in enumerate(dataset.targets) if y in keep]
    subset = Subset(dataset, index)
    return subset, [dataset.classes[k] for k in keep]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True, help="folder name under assets/cub/")
    p.add_argument("--root", default="../shared/data/CUB_200_2011")
    p.add_argument("--check-classes", type=int, default=10)
    p.add_argument("--half", action="store_true", help="store the weights in float16 (frpt export --half)")
    args = p.parse_args(argv)
    dest = REPO / "assets" / "cub" / args.name
    export_checkpoint(args.checkpoint, dest, half=args.half)
    model, card = load_checkpoint(dest)
    test = build_dataset("cub", "test", root=args.root, transform=build_transform(card["input_size"], train=False))
    subset, classes = check_subset(test, args.check_classes)
    metrics = evaluate(model, subset, progress=True)
    # The preset's frozen baseline on the same images, for the margin tests/test_assets.py asserts.
    from frpt.config import model_config
    from frpt.models import build_model

    baseline = evaluate(build_model(model_config(card["preset"], "pt", input_size=card["input_size"],
                                                 backbone=card["model"]["backbone"])), subset, progress=True)
    raw = json.loads((dest / CARD).read_text())
    raw["exported_from"] = str(Path(args.checkpoint))
    raw["check"] = {"split": "test", "classes": classes, "images": len(subset), "metrics": metrics,
                    "baseline_pt_metrics": baseline,
                    "command": "python bench/ship_checkpoint.py " + " ".join(argv or sys.argv[1:])}
    atomic_write_text(dest / CARD, json.dumps(raw, indent=2))  # check/exported_from are outside the sealed fields
    load_card(dest)
    print(json.dumps({"checkpoint": str(dest.relative_to(REPO)), "check": metrics, "baseline_pt": baseline}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
