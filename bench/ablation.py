"""Table 1 ablation on CUB-200-2011 (paper Table 1), one ``python -m frpt`` subprocess per step.

Every row is trained with ``python -m frpt train`` and evaluated with ``python -m frpt evaluate --checkpoint``;
the PT row (nothing trained, shared by both presets) is ``python -m frpt evaluate --preset pt``. The exact
command lines land in bench/results.json next to the numbers, and each run's log.csv is copied to
bench/curves/<preset>-<variant>.csv.

Profiles:
  quick   128 px, batch 32, 4 epochs x 20 batches (2,560 random training images seen, ~0.44 of an epoch of the
          5,864-image split), R@1 only after the last epoch; paper preset at lr 1e-2 (the paper's 1e-3 barely
          moves the 0.5 M learned parameters in 80 steps), official preset at its own lr (0.02 behind the
          1,000-iteration warm-up, so in practice 0.002-0.0035). The whole table (both presets, the DPP rows
          also with the bounded DPP) takes about an hour on an idle 2-core CPU (bench/RESULTS.md).
  medium  128 px, batch 32, 12 epochs x 40 batches (480 steps, ~2.6 passes over the train split), test R@1
          every 4 epochs; paper lr 1e-2. For a few rows at a time (20-40 min each on 2 cores).
  full    paper settings: 224 px, each preset's epochs/batch/lr (500 epochs), test R@1 every 10 epochs.
          For a GPU or an overnight run.
  short   the full profile's settings (224 px, each preset's batch, lr and schedule) for ``--epochs E`` epochs
          instead of 500: what a lent GPU's minutes allow (bench/gpu_session.py chooses E from a timed probe).
  compact the compact preset (ours, frpt/compact.py) at 224 px with its own settings: every row trains on one
          shared feature cache (runs/ablation/compact/features), so only the first rows pay for the backbone
          passes; each record keeps the seconds that went into caching (train_cache_seconds).
Every profile evaluates on the full 5,924-image test split; a row's metrics are those of the evaluation
``frpt train`` runs after its last epoch (``--separate-eval`` adds an ``frpt evaluate --checkpoint`` pass).

DPP settings (``--dpp``, rows with a DPP only): ``published`` = the preset as published; ``slow`` = the DPP at
2e-4 x the learning rate (``--prompt-lr-scale 2e-4``); ``bounded`` = slow plus ``--saliency-bound 2`` (saliency
logits squashed to (-2, 2), so the softmax cannot turn one-hot). See bench/RESULTS.md "DPP collapse".

Example: python bench/ablation.py --profile quick --preset paper --variants pt frpt finetune --dpp published
Re-running skips a step whose output (train.json / eval.json) exists and was made by the same command.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frpt.config import DPP_VARIANTS  # noqa: E402 - plain dataclasses, no torch
from frpt.fileio import atomic_write  # noqa: E402
from frpt.reproduction import PAPER_PARAMS, PAPER_R1  # noqa: E402 - paper Table 1 (ResNet-50, CUB R@1 %), one copy
DEFAULT_ROOT = "../shared/data/CUB_200_2011"  # relative to the repository, like every recorded command
VARIANTS = ("pt", "frpt", "finetune", "dpp+pt", "pt+cah", "no-in")
DEFAULT_BACKBONE = "efficientnet_lite0"  # rows recorded before a backbone was chosen have no "backbone" key
PRESETS = ("paper", "official", "compact")

DPP_SETTINGS: dict[str, list[str]] = {
    "published": [],
    "slow": ["--prompt-lr-scale", "2e-4"],
    "bounded": ["--prompt-lr-scale", "2e-4", "--saliency-bound", "2"],
}

PROFILES: dict[str, dict] = {
    "quick": {"input_size": 128, "epochs": 4, "limit_batches": 20, "batch_size": 32, "eval_every": 0,
              "lr": {"paper": 1e-2, "official": None}},
    "medium": {"input_size": 128, "epochs": 12, "limit_batches": 40, "batch_size": 32, "eval_every": 4,
               "lr": {"paper": 1e-2, "official": None}},
    "full": {"input_size": 224, "epochs": None, "limit_batches": None, "batch_size": None, "eval_every": 10,
             "lr": {"paper": None, "official": None}},
    "short": {"input_size": 224, "epochs": None, "limit_batches": None, "batch_size": None, "eval_every": 0,
              "lr": {"paper": None, "official": None}},
    "compact": {"input_size": 224},
}
# Compact rows in the order that fills the shared cache best (pt: original + flip maps; dpp+pt: the prompt and
# its crops), then the rest; finetune trains the whole backbone on images and cannot use the cache.
COMPACT_ORDER = ("pt", "dpp+pt", "frpt", "pt+cah", "no-in", "finetune")
# --whitening (the compact preset's opt-in departure from Eq. 9, frpt/compact.py) applies to rows with a head.
WHITENING_VARIANTS = ("frpt", "pt+cah", "no-in")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def frpt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "frpt", *args]


def show(cmd: list[str]) -> str:
    """The command as one would type it (the interpreter shown as ``python``)."""
    return shlex.join(["python", *cmd[1:]])


CPU_SECONDS: dict[str, float] = {}  # command -> user+sys CPU seconds of its process (robust to a shared machine)


def run_json(cmd: list[str], log: Path) -> tuple[dict, float]:
    """Run ``cmd`` (stderr to ``log``); return the JSON on its last stdout line and the wall-clock seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[ablation] {show(cmd)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS[show(cmd)] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    if proc.returncode != 0:
        raise SystemExit(f"[ablation] failed ({proc.returncode}); see {log}: {show(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds


def cached(path: Path, command: str) -> dict | None:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("command") == command:
            return data
    return None


def data_args(root: str, size: int, threads: int, workers: int = 0) -> list[str]:
    loading = ["--workers", str(workers)] if workers else []  # 0 (the default) keeps the recorded CPU commands
    return ["--dataset", "cub", "--root", root, "--input-size", str(size), "--threads", str(threads), *loading,
            "--quiet"]


def machine() -> str:
    """What ran the rows: the CPU count and torch threads, and the GPU where one is visible (nvidia-smi)."""
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        gpus = []
    gpu = ", ".join(g.strip() for g in gpus if g.strip())
    return f"{platform.machine()} {os.cpu_count()} CPU" + (f", {gpu}" if gpu else "")


def learned_params(preset: str, variant: str, backbone: str) -> int:
    """Learned parameters with CUB's 100 training classes (what ``frpt info`` prints; no weights needed)."""
    if variant == "pt":
        return 0
    from frpt.config import model_config
    from frpt.models import build_model
    from frpt.models.backbone import RANDOM_WEIGHTS

    model = build_model(model_config(preset, variant, backbone=backbone, num_classes=100), RANDOM_WEIGHTS)
    return int(model.parameter_report()["total"]["learned"])


def pt_row(args: argparse.Namespace, prof: dict) -> dict:
    size = prof["input_size"]
    folder = Path(args.out) / args.profile / f"pt-{size}"
    cmd = frpt_cmd("evaluate", "--preset", "pt", "--backbone", args.backbone,
                   *data_args(args.root, size, args.threads, args.workers))
    got = cached(folder / "eval.json", show(cmd))
    if got is None:
        metrics, seconds = run_json(cmd, folder / "eval.log")
        got = {"command": show(cmd), "metrics": metrics, "eval_seconds": round(seconds, 1),
               "eval_cpu_seconds": CPU_SECONDS[show(cmd)]}
        if args.check_repro:  # the PT row has no randomness: a rerun must print the identical JSON
            again, _ = run_json(cmd, folder / "eval-rerun.log")
            got["rerun_identical"] = again == metrics
            got["rerun_metrics"] = again
        (folder / "eval.json").write_text(json.dumps(got, indent=1))
    rec = record(args, "paper", "pt", got["metrics"], size, epochs=0, train_seconds=0.0, learned=0,
                 command=got["command"], eval_command=got["command"], eval_seconds=got["eval_seconds"])
    rec["eval_cpu_seconds"] = got.get("eval_cpu_seconds")
    if "rerun_identical" in got:
        rec["rerun_identical"] = got["rerun_identical"]
    rec["note"] = "frozen backbone, nothing trained; the same row for both presets"
    return rec


def run_train(cmd: list[str], folder: Path, ckpt: Path) -> dict:
    """Run a ``frpt train`` command once: its train.json is reused while the command is unchanged."""
    got = cached(folder / "train.json", show(cmd))
    if got is None:
        started = folder / "train.started"  # the command of a run under way (or killed): resume only that one
        resume = ckpt.exists() and started.is_file() and started.read_text() == show(cmd)
        if ckpt.exists() and not resume:  # a half-finished run from another command: start clean
            shutil.rmtree(ckpt)
        folder.mkdir(parents=True, exist_ok=True)
        started.write_text(show(cmd))
        ran = cmd + ["--resume"] if resume else cmd
        out, seconds = run_json(ran, folder / "train.log")
        got = {"command": show(cmd), "result": out, "train_seconds": round(seconds, 1),
               "train_cpu_seconds": CPU_SECONDS[show(ran)]}
        if resume:  # the seconds are the resumed part's only
            got["resumed"] = True
        (folder / "train.json").write_text(json.dumps(got, indent=1))
    return got


def curve_suffix(results: str) -> str:
    """"" for rows of bench/results.json; "-gpu" for bench/results_gpu.json (a lent GPU's rows), so the curves of
    one row name measured on two machines never overwrite each other."""
    stem = Path(results).stem
    return "" if stem == "results" else "-" + stem.removeprefix("results_")


def trained_row(args: argparse.Namespace, prof: dict, preset: str, variant: str, dpp: str) -> dict:
    size = prof["input_size"]
    name = f"{preset}-{variant}" + (f"-{dpp}" if dpp != "published" else "")
    folder = Path(args.out) / args.profile / name
    ckpt = folder / "checkpoint"
    train = frpt_cmd("train", "--preset", preset, "--variant", variant, "--backbone", args.backbone,
                     *data_args(args.root, size, args.threads, args.workers), "--out", str(ckpt), "--seed", str(args.seed),
                     *DPP_SETTINGS[dpp])
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--limit-batches", "limit_batches"),
                      ("--eval-every", "eval_every")):
        if prof[key]:
            train += [flag, str(prof[key])]
    if prof["lr"][preset] is not None:
        train += ["--lr", str(prof["lr"][preset])]
    if args.grad_checkpointing:
        train += ["--grad-checkpointing"]
    got = run_train(train, folder, ckpt)
    card = json.loads((ckpt / "card.json").read_text())
    if not args.separate_eval:
        # frpt train always evaluates the last epoch on the test split with the same code as frpt evaluate.
        metrics, eval_cmd, eval_seconds = card["metrics"], "(final evaluation inside the train command)", None
    else:
        ev = frpt_cmd("evaluate", "--checkpoint", str(ckpt), *data_args(args.root, size, args.threads, args.workers))
        done = cached(folder / "eval.json", show(ev))
        if done is None:
            metrics, seconds = run_json(ev, folder / "eval.log")
            done = {"command": show(ev), "metrics": metrics, "eval_seconds": round(seconds, 1),
                    "eval_cpu_seconds": CPU_SECONDS[show(ev)]}
            (folder / "eval.json").write_text(json.dumps(done, indent=1))
        metrics, eval_cmd, eval_seconds = done["metrics"], done["command"], done["eval_seconds"]
    curves = REPO / "bench" / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    curve = f"{args.profile}-{name}{curve_suffix(args.results)}.csv"
    shutil.copyfile(ckpt / "log.csv", curves / curve)
    rec = record(args, preset, variant, metrics, size, epochs=int(card["epoch"]), train_seconds=got["train_seconds"],
                 learned=learned_params(preset, variant, args.backbone), command=got["command"],
                 eval_command=eval_cmd, eval_seconds=eval_seconds)
    rec["dpp"] = dpp
    rec["curve"] = f"bench/curves/{curve}"
    rec["train_images_seen"] = (prof["limit_batches"] or 5864 // card["train"]["batch_size"]) \
        * card["train"]["batch_size"] * int(card["epoch"])
    rec["lr"] = card["train"]["lr"]
    rec["train_cpu_seconds"] = got.get("train_cpu_seconds")
    rec["checkpoint"] = str(ckpt)
    if args.probe and variant in DPP_VARIANTS:
        rec.update(probe_row(args, folder, ckpt))
    return rec


def probe_row(args: argparse.Namespace, folder: Path, ckpt: Path) -> dict:
    """bench/probe_checkpoint.py on a trained row (run once per checkpoint): the test split with the DPP replaced by
    the identity warp and the trained head kept, and the CAH gate's statistics."""
    cmd = [sys.executable, "bench/probe_checkpoint.py", "--checkpoint", str(ckpt), "--dataset", "cub",
           "--root", args.root, "--threads", str(args.threads)]
    done = cached(folder / "probe.json", show(cmd))
    if done is None:
        result, seconds = run_json(cmd, folder / "probe.log")
        done = {"command": show(cmd), "result": result, "seconds": round(seconds, 1)}
        (folder / "probe.json").write_text(json.dumps(done, indent=1))
    result = done["result"]
    return {"identity_warp": result.get("identity_warp"), "probe_command": done["command"],
            **{k: v for k, v in result.items() if k.startswith("gate_")}}


def compact_row(args: argparse.Namespace, variant: str) -> dict:
    """One row of the compact preset: ``frpt train --preset compact`` (its final evaluation is on the test split,
    from the same cache) with a feature cache shared by all rows."""
    size = compact_size(args)
    base = Path(args.out) / compact_folder(args.backbone, size)
    whiten = args.whitening and variant in WHITENING_VARIANTS
    folder = base / (f"{variant}-whitening" if whiten else variant)
    ckpt = folder / "checkpoint"
    cmd = frpt_cmd("train", "--preset", "compact", "--variant", variant, "--backbone", args.backbone,
                   *data_args(args.root, size, args.threads, args.workers), "--out", str(ckpt), "--seed", str(args.seed),
                   "--feature-cache", str(base / "features"))
    if whiten:
        cmd += ["--whitening"]
    if variant == "finetune":  # the same wall-clock budget as the FRPT row (bench/RESULTS.md says how it was set)
        cmd += ["--epochs", str(args.finetune_epochs), "--lr", "0.01", "--batch-size", "32", "--optimizer", "sgd"]
    got = run_train(cmd, folder, ckpt)
    card = json.loads((ckpt / "card.json").read_text())
    report = card.get("compact", {})
    rec = record(args, "compact", variant, card["metrics"], size, epochs=int(card["epoch"]),
                 train_seconds=got["train_seconds"], learned=learned_params("compact", variant, args.backbone),
                 command=got["command"], eval_command="(final evaluation inside the train command)",
                 eval_seconds=None)
    rec["profile"] = "compact"
    if whiten:
        rec["whitening"] = True
    rec["train_cpu_seconds"] = got.get("train_cpu_seconds")
    rec["checkpoint"] = str(ckpt)
    for key in ("whitening_shrink", "train_cache_seconds", "prompt_kept", "prompt_validation_recall@1", "head_epochs", "val_classes"):
        if key in report:
            rec[key] = report[key]
    return rec


def compact_size(args: argparse.Namespace) -> int:
    """The compact rows' input size: ``--input-size``, else the backbone's native size (lite0 224, lite1 240, ...)."""
    if args.input_size:
        return args.input_size
    from frpt.models.backbone import default_input_size

    return default_input_size(args.backbone)


def compact_folder(backbone: str, size: int) -> str:
    """lite0 at 224 keeps the folder its recorded rows name; another backbone or size gets its own cache."""
    return "compact" if (backbone, size) == (DEFAULT_BACKBONE, 224) else f"compact-{backbone}-{size}"


def record(args: argparse.Namespace, preset: str, variant: str, metrics: dict, size: int, *, epochs: int,
           train_seconds: float, learned: int, command: str, eval_command: str, eval_seconds: float | None) -> dict:
    return {
        "dataset": "cub", "preset": preset, "variant": variant, "backbone": args.backbone, "profile": args.profile,
        **{k: metrics[k] for k in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")},
        "learned_params": learned, "train_seconds": train_seconds, "epochs": epochs, "input_size": size,
        "nmi": metrics.get("nmi"), "paper_r50_recall@1": PAPER_R1[variant], "commit": git_commit(),
        "command": command,
        "eval_command": eval_command, "eval_seconds": eval_seconds,
        "machine": f"{machine()}, torch threads {args.threads}", **({"data_copy": args.data_copy} if args.data_copy else {}),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def merge(path: Path, new: list[dict]) -> None:
    """Replace records with the same (preset, variant, DPP settings, profile, input size); keep the rest."""
    old = json.loads(path.read_text()) if path.is_file() else []
    fresh = {row_key(r) for r in new}
    rows = sorted([r for r in old if row_key(r) not in fresh] + new, key=row_order)
    # Atomic: the app's Reproduction page may read the file while a long ablation rewrites it.
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1) + "\n"))


def identity_warp(r: dict) -> str:
    """The probe's figures (the trained head kept, the DPP replaced by the identity warp), or "-"."""
    probe = r.get("identity_warp")
    return f"{100 * probe['recall@1']:.1f} / {100 * probe['map@r']:.1f}" if probe else "-"


def dpp_of(r: dict) -> str:
    return r.get("dpp", "published") if r["variant"] in DPP_VARIANTS else "-"


def row_key(r: dict) -> tuple:
    return (r["dataset"], r["preset"], r["variant"], dpp_of(r), r.get("profile"), r["input_size"],
            r.get("backbone", DEFAULT_BACKBONE), bool(r.get("whitening")))


def row_order(r: dict) -> tuple:
    return (r["input_size"], r.get("profile") or "", PRESETS.index(r["preset"]), VARIANTS.index(r["variant"]),
            tuple(DPP_SETTINGS).index(dpp_of(r)) if dpp_of(r) != "-" else -1)


def render(path: Path, profile: str, size: int) -> str:
    """Markdown Table 1 for one profile/input size from results.json: every recorded row (a DPP row once per DPP
    setting run); for the whole-table profiles (quick, full) "not yet run" where a published row is missing."""
    complete = profile in ("quick", "full")
    rows = [r for r in (json.loads(path.read_text()) if path.is_file() else [])
            if r.get("profile") == profile and r["input_size"] == size]
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    probed = profile != "compact" and any(r.get("identity_warp") for r in rows)
    out = ["| preset | variant | DPP | R@1 | R@2 | R@4 | R@8 | MAP@R | learned params | train s | epochs | input | "
           "paper R50 R@1 (params) |", "|" + "---|" * 13]
    for preset in (("compact",) if profile == "compact" else ("paper", "official")):
        for v in VARIANTS:
            paper = f"{PAPER_R1[v]} ({PAPER_PARAMS[v]})"
            mine = sorted((r for r in rows if r["preset"] == preset and r["variant"] == v), key=row_order)
            if complete and not any(dpp_of(r) in ("published", "-") for r in mine):
                out.append(f"| {preset} | {v} | {'published' if v in DPP_VARIANTS else '-'} | not yet run | | | | | "
                           f"| | | {size} | {paper} |")
            for r in mine:
                label = preset if r.get("backbone", DEFAULT_BACKBONE) == DEFAULT_BACKBONE \
                    else f"{preset} ({r['backbone']})"
                variant = f"{v} + whitening" if r.get("whitening") else v
                out.append(f"| {label} | {variant} | {dpp_of(r)} | {pct(r['recall@1'])} | {pct(r['recall@2'])} | "
                           f"{pct(r['recall@4'])} | {pct(r['recall@8'])} | {pct(r['map@r'])} | "
                           f"{r['learned_params']:,} | {r['train_seconds']:.0f} | {r['epochs']} | {r['input_size']} | "
                           f"{paper} |" + (f" {compact_notes(r)} |" if profile == "compact" else "")
                           + (f" {identity_warp(r)} |" if probed else ""))
    if profile == "compact":
        out[0] += " notes |"
        out[1] += "---|"
    if probed:
        out[0] += " identity warp R@1 / MAP@R |"
        out[1] += "---|"
    return "\n".join(out)


def compact_notes(r: dict) -> str:
    """What a compact row's figures rest on: the prompt kept, the head epoch chosen, the caching it paid for."""
    notes = []
    if "prompt_kept" in r:
        notes.append(f"prompt: {r['prompt_kept']}")
    if "head_epochs" in r:
        notes.append(f"head epochs (validation): {r['head_epochs']}")
    if r.get("train_cache_seconds"):
        notes.append(f"{r['train_cache_seconds']:.0f} s caching training maps")
    elif r["variant"] != "finetune":
        notes.append("feature cache already warm")
    return "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=(*PROFILES, "cached"), default="quick",
                   help="cached: only with --render (rows from bench/probes/cached_head.py)")
    p.add_argument("--preset", choices=(*PRESETS, "both"), default="both")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--root", default=DEFAULT_ROOT, help="CUB_200_2011 folder (read in place, never copied)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--input-size", type=int, help="override the profile's input size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per command (0: in the main one)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs (required by --profile short)")
    p.add_argument("--limit-batches", type=int, help="override the profile's training batches per epoch")
    p.add_argument("--eval-every", type=int, help="override the profile's test evaluation every N epochs (0: last only)")
    p.add_argument("--data-copy", help="recorded with each row when --root is not the original CUB files "
                                       "(e.g. the WebP copy of bench/pack_cub.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-repro", action="store_true", help="run the PT evaluation twice and compare the JSON")
    p.add_argument("--dpp", nargs="+", choices=tuple(DPP_SETTINGS), default=["published", "bounded"],
                   help="DPP settings to run each DPP row with (frpt, dpp+pt, no-in); others run once")
    p.add_argument("--separate-eval", action="store_true",
                   help="evaluate each trained checkpoint again with frpt evaluate --checkpoint (one more test-set "
                        "pass per row) instead of taking the metrics of frpt train's own final evaluation")
    p.add_argument("--finetune-epochs", type=int, default=2,
                   help="compact profile: epochs of the fine-tuning row (set to match the FRPT row's wall clock)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="trained rows: frpt train --grad-checkpointing (about half the memory, a slower step)")
    p.add_argument("--probe", action="store_true",
                   help="DPP rows: also the identity-warp probe (bench/probe_checkpoint.py), recorded in the row")
    p.add_argument("--whitening", action="store_true",
                   help="compact profile: rows with a head also whiten (frpt train --whitening), recorded beside "
                        "the plain rows")
    p.add_argument("--results", default=str(REPO / "bench" / "results.json"))
    p.add_argument("--render", action="store_true", help="print the markdown table from --results and exit")
    args = p.parse_args(argv)
    if args.render:
        size = args.input_size or PROFILES.get(args.profile, PROFILES["quick"])["input_size"]
        print(render(Path(args.results), args.profile, size))
        return 0
    if args.profile not in PROFILES:
        p.error("--profile cached only renders; its rows come from bench/probes/cached_head.py")
    if args.profile == "compact":
        for variant in [v for v in COMPACT_ORDER if v in args.variants]:
            row = compact_row(args, variant)
            merge(Path(args.results), [row])
            print(json.dumps({k: row[k] for k in ("preset", "variant", "recall@1", "map@r")}), flush=True)
        return 0
    os.chdir(REPO)  # recorded commands name paths relative to the repository, never one machine's absolute folder
    prof = dict(PROFILES[args.profile])
    if args.epochs:
        prof["epochs"] = args.epochs
    elif args.profile == "short":
        p.error("--profile short needs --epochs")
    if args.input_size:
        prof["input_size"] = args.input_size
    for key in ("limit_batches", "eval_every"):
        if getattr(args, key) is not None:
            prof[key] = getattr(args, key)
    presets = PRESETS if args.preset == "both" else (args.preset,)
    for variant in args.variants:  # one row at a time, merged as soon as it is done
        if variant == "pt":
            pt = pt_row(args, prof)
            rows = [pt, {**pt, "preset": "official"}]
        else:
            settings = args.dpp if variant in DPP_VARIANTS else ["published"]
            rows = [trained_row(args, prof, preset, variant, dpp) for preset in presets for dpp in settings]
        merge(Path(args.results), rows)
        for r in rows:
            print(json.dumps({k: r[k] for k in ("preset", "variant", "input_size", "recall@1", "map@r")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
