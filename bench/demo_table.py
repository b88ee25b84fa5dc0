"""Table 1 on the built-in synthetic set for the shipped demo checkpoints (issue 11, item 4).

    python bench/demo_table.py [--out runs/demo-table] [--record]

Re-evaluates the three shipped demos (assets/demo: pt, no-cah, frpt) live on the synthetic test split, trains the
rows the app does not ship with the same recipe (frpt.demo.train_demo): PT+CAH, FRPT whose crop centre is
regressed onto the training markers' boxes (the compact preset's named departure, --prompt-supervision boxes) and
FRPT with the whitened head (``--whitening``), and
measures each prompt's focus on the marker: the share of the prompted image read from inside the marker's box,
against the box's share of the image (the identity prompt). Prints a Markdown table and one JSON line; --record
also writes them to bench/demo_results.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from frpt import demo  # noqa: E402
from frpt.checkpoint import load_checkpoint  # noqa: E402
from frpt.data import build_dataset, build_transform  # noqa: E402
from frpt.evaluation import evaluate  # noqa: E402
from frpt.fileio import atomic_write_text  # noqa: E402
from frpt.warp_gallery import warp_records  # noqa: E402

ROWS = (("pt", "PT (shipped `pt`)"), ("pt+cah", "PT+CAH"), ("no-cah", "DPP+PT (shipped `no-cah`)"),
        ("frpt", "FRPT (shipped `frpt`)"), ("frpt-boxes", "FRPT, crop centre from boxes (named departure)"),
        ("frpt-whitening", "FRPT, whitened head (named departure)"))
# Rows trained here (not shipped): name -> (variant, prompt supervision, whitening)
TRAINED = {"pt+cah": ("pt+cah", "labels", False), "frpt-boxes": ("frpt", "boxes", False),
           "frpt-whitening": ("frpt", "labels", True)}


def focus(model, test_set) -> tuple[float | None, float | None]:
    """Mean focus score and mean box share over the test split (None without a prompt)."""
    if model.prompt is None:
        return None, None
    records = []
    for start in range(0, len(test_set), 64):
        records += warp_records(model, test_set, range(start, min(len(test_set), start + 64)))
    return (float(np.mean([r.focus for r in records])), float(np.mean([r.area_share for r in records])))


def row(name: str, folder: Path, test_set) -> dict:
    model, card = load_checkpoint(folder)
    model.eval()
    metrics = evaluate(model, test_set, progress=False)
    share, area = focus(model, test_set)
    compact = card.get("compact") or {}
    return {"row": name, **{k: round(float(metrics[k]), 4) for k in ("recall@1", "recall@2", "recall@4", "recall@8",
                                                                      "map@r")},
            "focus": None if share is None else round(share, 4), "box_share": None if area is None else round(area, 4),
            "prompt_kept": compact.get("prompt_kept"), "head_epochs": compact.get("head_epochs"),
            "learned_parameters": model.parameter_report()["total"]["learned"],
            "train_seconds": compact.get("train_seconds")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/demo-table", help="folder for the rows trained here")
    p.add_argument("--record", action="store_true", help="write the rows to bench/demo_results.json")
    p.add_argument("--rows", nargs="+", choices=[name for name, _ in ROWS], help="only these rows (not with --record)")
    args = p.parse_args(argv)
    if args.rows and args.record:
        p.error("--record writes the whole table; drop --rows")
    out = Path(args.out)
    test_set = build_dataset("synthetic", "test", transform=build_transform(demo.INPUT_SIZE, train=False))
    features = out / "features"
    rows = []
    for name, label in ROWS:
        if args.rows and name not in args.rows:
            continue
        if name in demo.DEMOS:
            folder = demo.demo_checkpoint_dir(name)
        else:
            folder = out / name
            variant, supervision, whitening = TRAINED[name]
            # a finished row in --out is reused (delete its folder to retrain it)
            demo.train_demo(variant, folder, supervision=supervision, whitening=whitening, progress=False,
                            feature_cache=features, resume=True)
        rows.append({**row(name, folder, test_set), "label": label})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print("| row | R@1 | R@2 | R@4 | R@8 | MAP@R | focus on the marker (box share) | learned params | prompt kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f = "-" if r["focus"] is None else f"{100 * r['focus']:.1f}% ({100 * r['box_share']:.1f}%)"
        print(f"| {r['label']} | {100 * r['recall@1']:.1f} | {100 * r['recall@2']:.1f} | {100 * r['recall@4']:.1f} | "
              f"{100 * r['recall@8']:.1f} | {100 * r['map@r']:.1f} | {f} | {r['learned_parameters']:,} | "
              f"{r['prompt_kept'] or '-'} |")
    record = {"command": "python bench/demo_table.py --record", "commit": commit,
              "input_size": demo.INPUT_SIZE, "rows": rows}
    if args.record:
        atomic_write_text(ROOT / "bench" / "demo_results.json", json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
