"""How peaked a checkpoint's DPP saliency is on a few test images: the largest saliency cell (1/961 = uniform,
1.0 = collapsed onto one cell) and the peak sampling density (16x16 bins, 1.0 = identity warp).

Usage: python bench/probes/saliency_stats.py --checkpoint DIR --dataset cub --root PATH [--images 8 --stride 500]
Prints one JSON line; used for the "DPP collapse" and quick-row notes in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.models import sampling_density  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--stride", type=int, default=500, help="test images 0, stride, 2*stride, ...")
    args = parser.parse_args()
    model, card = load_checkpoint(args.checkpoint)
    data = build_dataset(args.dataset, "test", root=args.root, transform=build_transform(card["input_size"], train=False))
    images = torch.stack([data[i * args.stride][0] for i in range(args.images)])
    with torch.no_grad():
        prompt = model.run_prompt(images)
    if prompt is None:
        raise SystemExit("this checkpoint has no DPP")
    print(json.dumps({
        "checkpoint": args.checkpoint,
        "saliency_max": [round(v, 4) for v in prompt.saliency.flatten(1).max(1).values.tolist()],
        "density_max": [round(v, 2) for v in sampling_density(prompt.grid, 16).flatten(1).max(1).values.tolist()],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
