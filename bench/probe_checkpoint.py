"""Where does a trained FRPT checkpoint gain or lose against the frozen baseline? Test-time ablations of its parts.

For a checkpoint with a DPP, the test split is evaluated with the DPP replaced by the identity warp (saliency conv
zeroed: uniform saliency, exactly the identity, see tests/test_sampler.py) while the trained head is kept. For a
checkpoint with a CAH, the channel gate W_C (Eq. 7) is summarised on the test images: its mean and the share of
channels it nearly closes (< 0.1) or keeps (> 0.9). Prints one JSON line.

Usage: python bench/probe_checkpoint.py --checkpoint DIR --dataset cub --root PATH [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.evaluation import evaluate  # noqa: E402


@torch.no_grad()
def gate_stats(model, dataset, images: int = 256) -> dict[str, float]:
    step = max(1, len(dataset) // images)
    x = torch.stack([dataset[i][0] for i in range(0, len(dataset), step)][:images])
    prompt = model.run_prompt(x)
    feature_map = model.backbone(model.normalize(prompt.warped if prompt is not None else x))
    w = model.cah.channel_weights(feature_map).flatten(1)
    return {"gate_mean": round(w.mean().item(), 4), "gate_below_0.1": round((w < 0.1).float().mean().item(), 4),
            "gate_above_0.9": round((w > 0.9).float().mean().item(), 4), "gate_images": len(x)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, card = load_checkpoint(args.checkpoint)
    model.eval()
    data = build_dataset(args.dataset, "test", root=args.root, transform=build_transform(card["input_size"], train=False))
    out: dict = {"checkpoint": args.checkpoint, "trained": {k: card["metrics"].get(k) for k in ("recall@1", "map@r")}}
    if model.cah is not None:
        out.update(gate_stats(model, data))
    if model.prompt is not None:
        with torch.no_grad():
            model.prompt.conv.weight.zero_()
            if model.prompt.conv.bias is not None:
                model.prompt.conv.bias.zero_()
        m = evaluate(model, data, progress=False)
        out["identity_warp"] = {k: m[k] for k in ("recall@1", "map@r")}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
