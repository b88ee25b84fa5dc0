"""What to run in the minutes of a lent GPU machine (bench/RESULTS.md, "GPU"): one script, two stages.

  smoke  every training path on CUDA, on the synthetic set (seconds): compact, paper and official ``frpt train``
         for a few batches and an ``frpt evaluate``; stops at the first failure.
  table  CUB at 224 px within ``--budget`` seconds: the PT row, then the paper and official FRPT rows in the
         ``short`` profile (bench/ablation.py) with as many epochs as a timed probe says fit their share of the
         budget, then the compact table's PT and FRPT rows while time is left. Rows land in
         ``--results`` (a separate file, bench/results_gpu.json here) as each finishes, with their curves and logs.

CUB must be at ../shared/data/CUB_200_2011 relative to the repository (the recorded commands name that path);
on the GPU machine it is the WebP copy of bench/pack_cub.py, and each row says so (``data_copy``).

    python bench/gpu_session.py smoke --out "$OUT"
    python bench/gpu_session.py table --out "$OUT" --budget 520
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = "../shared/data/CUB_200_2011"
DATA_COPY = "CUB re-encoded as WebP quality 65 (bench/pack_cub.py), same image sizes"
TRAIN_IMAGES = 5864


def frpt(*args: str, timeout: float | None = None, log: Path | None = None) -> tuple[dict, float]:
    """Run ``python -m frpt ARGS``; return its last JSON line and the wall seconds."""
    started = time.perf_counter()
    with open(log or os.devnull, "a") as err:
        proc = subprocess.run([sys.executable, "-m", "frpt", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    if proc.returncode:
        raise SystemExit(f"[gpu] failed ({proc.returncode}): python -m frpt {' '.join(args)}; see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def smoke(out: Path, device: str) -> None:
    log = out / "smoke.log"
    common = ("--dataset", "synthetic", "--device", device, "--quiet", "--workers", "4")
    for preset in ("compact", "paper", "official"):
        for variant in (("frpt", "finetune") if preset == "compact" else ("frpt",)):
            got, sec = frpt("train", "--preset", preset, "--variant", variant, *common, "--epochs", "1",
                            "--limit-batches", "3", "--prompt-epochs", "1", "--out", f"/tmp/smoke-{preset}-{variant}",
                            log=log)
            print(f"[gpu] smoke {preset}/{variant}: {sec:.1f} s, R@1 {got.get('recall@1')}", flush=True)
    got, sec = frpt("evaluate", "--checkpoint", "/tmp/smoke-paper-frpt", *common, log=log)
    print(f"[gpu] smoke evaluate: {sec:.1f} s, R@1 {got.get('recall@1')}", flush=True)


def probe(preset: str, workers: int, log: Path, steps: tuple[int, int] = (10, 40)) -> tuple[float, float, float]:
    """Seconds per training step of ``preset``'s FRPT at 224 px, the seconds each epoch adds (its data-loader
    workers start), and the fixed seconds of a run (start-up, the final test-split evaluation), from two one-epoch runs of
    ``steps`` batches. One run alone counts the workers' start-up as steps: on the H100 that read 0.62 s a step
    for the paper preset, against 0.10 s in its real epoch, and the table got about a sixth of the epochs that fit."""
    epoch_seconds, walls = [], []
    for k in steps:
        folder = Path(f"/tmp/probe-{preset}-{k}")
        if folder.exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        _, wall = frpt("train", "--preset", preset, "--variant", "frpt", "--dataset", "cub", "--root", ROOT,
                       "--input-size", "224", "--workers", str(workers), "--quiet", "--epochs", "1",
                       "--limit-batches", str(k), "--out", str(folder), log=log)
        with open(folder / "log.csv") as f:
            epoch_seconds.append(float(list(csv.DictReader(f))[-1]["seconds"]))
        walls.append(wall)
    step = max((epoch_seconds[1] - epoch_seconds[0]) / (steps[1] - steps[0]), 1e-3)
    per_epoch = max(epoch_seconds[0] - steps[0] * step, 0.0)
    return step, per_epoch, walls[0] - epoch_seconds[0]


def ablation(out: Path, *args: str, timeout: float) -> bool:
    """One bench/ablation.py call into ``out``'s results; False when it ran out of time."""
    cmd = [sys.executable, "bench/ablation.py", *args, "--root", ROOT, "--threads", "8", "--out", "runs/gpu",
           "--results", str(out / "results_gpu.json"), "--data-copy", DATA_COPY]
    print(f"[gpu] {' '.join(cmd[1:])} (up to {timeout:.0f} s)", flush=True)
    try:
        with open(out / "ablation.log", "a") as err:
            subprocess.run(cmd, cwd=REPO, check=True, timeout=timeout, stderr=err)
        return True
    except subprocess.TimeoutExpired:
        print("[gpu] out of time", flush=True)
        return False
    finally:
        pack_records(out)


def pack_records(out: Path) -> None:
    """Curves, cards and logs of the rows so far in one file (the machine returns at most 8 files)."""
    with tarfile.open(out / "records.tar.gz", "w:gz") as tar:
        for path in sorted((REPO / "runs" / "gpu").rglob("*")):
            if path.suffix in (".json", ".csv", ".log") and "features" not in path.parts:
                tar.add(path, arcname=str(path.relative_to(REPO / "runs" / "gpu")))
        for path in sorted((REPO / "bench" / "curves").glob("short-*-gpu.csv")):
            tar.add(path, arcname=f"curves/{path.name}")


def table(out: Path, budget: float, workers: int) -> None:
    deadline = time.perf_counter() + budget
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    log = out / "probe.log"
    ablation(out, "--profile", "short", "--epochs", "1", "--variants", "pt", "--workers", str(workers), timeout=left())
    plan = {}
    for preset in ("paper", "official"):
        step, per_epoch, fixed = probe(preset, workers, log)
        plan[preset] = {"step_seconds": round(step, 4), "epoch_overhead_seconds": round(per_epoch, 2),
                        "fixed_seconds": round(fixed, 1)}
    print(f"[gpu] probe: {json.dumps(plan)}", flush=True)
    # What is left, less a fifth of the budget kept for the compact rows, split between the two published presets.
    for k, preset in enumerate(("paper", "official")):
        share = (left() - 0.2 * budget) / (2 - k)
        steps_per_epoch = TRAIN_IMAGES // (32 if preset == "paper" else 256)
        costs = plan[preset]
        epoch_seconds = steps_per_epoch * costs["step_seconds"] + costs["epoch_overhead_seconds"]
        epochs = max(1, int((share - costs["fixed_seconds"] - 10) // epoch_seconds))
        plan[preset]["epochs"] = epochs
        print(f"[gpu] {preset}: {epochs} epochs in about {share:.0f} s", flush=True)
        if not ablation(out, "--profile", "short", "--epochs", str(epochs), "--preset", preset, "--variants", "frpt",
                        "--dpp", "published", "--workers", str(workers), timeout=max(left() - 5, 1)):
            break
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    if left() > 30:
        ablation(out, "--profile", "compact", "--variants", "pt", "frpt", "--workers", str(workers),
                 timeout=max(left() - 5, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("smoke", "table"))
    p.add_argument("--out", required=True, help="folder for results and logs ($OUT on the GPU machine)")
    p.add_argument("--budget", type=float, default=520.0, help="table: seconds for everything")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--device", default="cuda", help="smoke: where to run it (cpu checks the script itself)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    smoke(out, args.device) if args.stage == "smoke" else table(out, args.budget, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
