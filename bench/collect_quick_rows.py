"""Fold the rows of bench/quick_rows.sh (runs/quick/*.json) into bench/results.json and print a markdown table.

Usage: python bench/collect_quick_rows.py [--commit SHA]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAPER_R1 = {"pt": 44.9, "finetune": 69.5, "dpp+pt": 55.7, "pt+cah": 61.8, "no-in": 72.2, "frpt": 74.3}


def learned_params(card: dict) -> int:
    from frpt.checkpoint import load_checkpoint
    model, _ = load_checkpoint(card["path"])
    return model.parameter_report()["total"]["learned"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commit", required=True)
    args = parser.parse_args()
    from frpt.checkpoint import load_card
    results_path = REPO / "bench" / "results.json"
    records = [r for r in json.loads(results_path.read_text()) if r.get("source") != "quick_rows.sh"]
    rows = []
    for path in sorted((REPO / "runs" / "quick").glob("*.json")):
        run = json.loads(path.read_text())
        if not run.get("result"):
            continue
        card = load_card(REPO / run["result"]["checkpoint"])
        m = run["result"]
        rec = {"dataset": "cub", "preset": card["preset"], "variant": card["variant"],
               "backbone": card["backbone"]["name"], "profile": "quick",
               "prompt_lr_scale": card["train"]["prompt_lr_scale"],
               **{k: m[k] for k in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")},
               "learned_params": learned_params(card), "train_seconds": run["seconds"], "epochs": card["epoch"],
               "input_size": card["input_size"], "paper_r50_recall@1": PAPER_R1[card["variant"]],
               "commit": args.commit, "command": run["command"], "source": "quick_rows.sh",
               "note": "train_seconds includes the final test-split evaluation; machine shared with the test suite"}
        records.append(rec)
        rows.append(rec)
    results_path.write_text(json.dumps(records, indent=1) + "\n")
    print("| preset | variant | DPP lr scale | R@1 | R@2 | R@4 | R@8 | MAP@R | learned params | train+eval s | paper R50 R@1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['variant']} | {r['prompt_lr_scale']:g} | " + " | ".join(f"{100 * r[k]:.1f}" for k in
              ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"))
              + f" | {r['learned_params']:,} | {r['train_seconds']} | {r['paper_r50_recall@1']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
