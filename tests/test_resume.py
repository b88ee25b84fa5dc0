"""Crash safety of training: a real `python -m frpt train` killed with SIGKILL at seeded random points, then
resumed with --resume, must leave only checkpoints the loader can trust and must end bit-identical to an
uninterrupted run with the same seed (weights, optimiser state, metrics, losses).

Kill points are drawn from ``random.Random(KILL_SEED)`` (env FRPT_KILL_SEED, default 2023) and printed; rerun
with ``-s`` to see them. Every process uses ``--threads 1`` so float reductions run in the same order.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from frpt.checkpoint import card_seal, load_card, load_checkpoint, load_train_state, verified_file
from frpt.training import read_log

from crashing import Crash, CrashingDataset  # tests/crashing.py

REPO = Path(__file__).resolve().parents[1]
KILL_SEED = int(os.environ.get("FRPT_KILL_SEED", "2023"))
EPOCHS = 4


def train_cmd(out: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "frpt", "train", "--dataset", "synthetic", "--preset", "paper", "--variant", "dpp+pt",
           "--input-size", "64", "--batch-size", "8", "--epochs", str(EPOCHS), "--limit-batches", "3", "--seed", "1",
           "--threads", "1", "--out", str(out), "--quiet"]
    return cmd + ["--resume"] if resume else cmd


def start(out: Path, resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(out, resume), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def card_epoch(out: Path) -> int:
    try:
        return int(json.loads((out / "card.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def writing(out: Path, epoch: int) -> bool:
    """Epoch ``epoch``'s checkpoint is being written: its temp or tensor files exist, its card not yet."""
    try:
        names = os.listdir(out)
    except FileNotFoundError:
        return False
    tag = f"e{epoch:04d}"
    return any(tag in n for n in names) and card_epoch(out) < epoch


def wait_until(proc: subprocess.Popen, cond, timeout: float = 90.0, poll: float = 0.005) -> bool:
    """Poll ``cond`` until true (True) or the process exits first (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("training made no progress")


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc``; False if it had already finished."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def assert_trustworthy(out: Path) -> int:
    """What the loader trusts after a crash is complete: the card parses, its files exist and match their sha256,
    and the model loads. Returns the card's epoch (0 when no epoch was ever committed)."""
    if not (out / "card.json").exists():
        return 0
    card = load_card(out)
    verified_file(out, card, "weights")
    load_train_state(card)
    load_checkpoint(out)
    log_epochs = [int(r["epoch"]) for r in read_log(out)]
    assert log_epochs[: card["epoch"]] == list(range(1, card["epoch"] + 1))  # the log is never behind the card
    return card["epoch"]


def plan_kills(rng: random.Random) -> list[tuple[str, int, float]]:
    """(kind, epoch, delay) triples: 'writing' kills as soon as epoch's checkpoint files start to appear (before
    its card, the commit point), 'mid' kills ``delay`` seconds after the card of ``epoch - 1`` appeared."""
    first = rng.choice([1, 2])
    return [("writing", first, 0.0),
            ("mid", rng.choice([first + 1, first + 2]), rng.uniform(0.05, 0.8)),
            ("writing", EPOCHS, rng.uniform(0.0, 0.01))]


@pytest.mark.slow  # ~50 s of CPU: two 4-epoch runs plus three restarts
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    rng = random.Random(KILL_SEED)
    plan = plan_kills(rng)
    print(f"\nFRPT_KILL_SEED={KILL_SEED} kill plan: {plan}")
    ref_dir, out = tmp_path / "reference", tmp_path / "interrupted"
    reference = start(ref_dir)  # runs alongside the interrupted chain (one thread each)
    log = []
    resume = False
    for kind, epoch, delay in plan:
        proc = start(out, resume)
        if kind == "writing":
            reached = wait_until(proc, lambda: writing(out, epoch), poll=0.002)
            if delay:
                time.sleep(delay)
        else:
            reached = wait_until(proc, lambda: card_epoch(out) >= epoch - 1)
            time.sleep(delay)
        killed = kill(proc)
        files = sorted(os.listdir(out)) if out.exists() else []
        committed = assert_trustworthy(out)
        log.append({"kind": kind, "epoch": epoch, "delay_s": round(delay, 3), "reached": reached, "killed": killed,
                    "committed_epoch": committed, "files": files})
        print("kill:", json.dumps(log[-1]))
        resume = True
    final = subprocess.run(train_cmd(out, resume=True), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_err[-2000:]

    assert sum(k["killed"] for k in log) >= 2, log  # at least two kills really interrupted a run
    assert any(k["kind"] == "writing" and k["killed"] and k["reached"] for k in log), log
    # the resumed run's result is the uninterrupted run's, exactly
    a, b = load_card(ref_dir), load_card(out)
    assert a["epoch"] == b["epoch"] == EPOCHS
    assert a["metrics"] == b["metrics"] and a["metrics"]["recall@1"] > 0
    last_json = [json.loads(text.strip().splitlines()[-1]) for text in (ref_out, final.stdout)]
    assert last_json[0]["recall@1"] == last_json[1]["recall@1"]
    for key in ("weights", "train_state"):
        ta, tb = load_file(str(verified_file(ref_dir, a, key))), load_file(str(verified_file(out, b, key)))
        assert ta.keys() == tb.keys() and len(ta) > 0
        for name in ta:
            assert torch.equal(ta[name], tb[name]), f"{key}:{name} differs after resume"
    la, lb = read_log(ref_dir), read_log(out)
    strip = lambda rows: [(r["epoch"], r["train_loss"], r["lr"], r["recall@1"]) for r in rows]  # noqa: E731
    assert strip(la) == strip(lb) and len(la) == EPOCHS
    # nothing left over: exactly the final checkpoint's files, no temps, no orphaned tensor files
    # (and the final test evaluation stored as the gallery, once, as the uninterrupted run stores it)
    assert sorted(os.listdir(out)) == sorted(["card.json", "log.csv", "gallery", b["files"]["weights"],
                                              b["files"]["train_state"]])
    assert sorted(os.listdir(out / "gallery")) == sorted(os.listdir(ref_dir / "gallery"))
    from frpt.gallery import load_gallery
    [stored] = [load_gallery(p) for p in (out / "gallery").glob("*.npz") if ".umap" not in p.name]
    np.testing.assert_array_equal(stored.embeddings.after, load_gallery(ref_dir / "gallery" / stored.path.name).embeddings.after)
    # written files get the usual umask mode (not mkstemp's 0600), so the app and colleagues can read them
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "card.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------- fast, in-process


def _tiny_run(out: Path, resume: bool = False, crash_after: int | None = None):
    """A 2-epoch run of 1 batch of 4 per epoch; ``crash_after=6`` stops it during epoch 2 (card at epoch 1)."""
    from frpt.config import model_config, train_config
    from frpt.data import build_dataset, build_transform
    from frpt.models import build_model
    from frpt.training import train

    data = build_dataset("synthetic", "train", transform=build_transform(64, train=True), num_classes=4,
                         images_per_class=4, image_size=64)
    if crash_after is not None:
        data = CrashingDataset(data, crash_after)
    torch.manual_seed(0)
    model = build_model(model_config("paper", "dpp+pt", num_classes=4, input_size=64))
    cfg = train_config("paper", epochs=2, batch_size=4, seed=3)
    return train(model, data, cfg, out, classes=[f"c{k}" for k in range(4)],
                 dataset_info={"name": "synthetic", "root": None}, resume=resume, progress=False, limit_batches=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.raises(Crash):
        _tiny_run(out, crash_after=6)  # epoch 1 reads items 1-4, so item 6 is inside epoch 2
    assert load_card(out)["epoch"] == 1
    return out


def _copy(src: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(src, dest)
    return dest


def _reseal(out: Path, key: str, tensors: dict) -> None:
    import hashlib

    from safetensors.torch import save_file
    card = json.loads((out / "card.json").read_text())
    save_file(tensors, str(out / card["files"][key]))
    card["files"][f"{key}_sha256"] = hashlib.sha256((out / card["files"][key]).read_bytes()).hexdigest()
    card["sealed_sha256"] = card_seal(card)
    (out / "card.json").write_text(json.dumps(card))


def test_resume_refuses_a_resealed_train_state_that_does_not_fit(tiny_run, tmp_path):
    from frpt.errors import CheckpointError
    for change in ("shape", "nan"):
        out = _copy(tiny_run, tmp_path / change)
        card = load_card(out)
        state = load_file(str(out / card["files"]["train_state"]))
        key = sorted(state)[0]
        state[key] = torch.zeros(3) if change == "shape" else torch.full_like(state[key], float("nan"))
        _reseal(out, "train_state", state)
        with pytest.raises(CheckpointError, match="does not fit the model"):
            _tiny_run(out, resume=True)


def test_resume_refuses_resealed_weights_that_do_not_fit(tiny_run, tmp_path):
    from frpt.errors import CheckpointError
    out = _copy(tiny_run, tmp_path / "w")
    card = load_card(out)
    weights = load_file(str(out / card["files"]["weights"]))
    key = sorted(weights)[0]
    weights[key] = torch.zeros(*weights[key].shape[:-1], weights[key].shape[-1] + 2)
    _reseal(out, "weights", weights)
    with pytest.raises(CheckpointError, match="wrong shape"):
        _tiny_run(out, resume=True)


@pytest.mark.parametrize("epoch", [99, -1, "1", None, True])
def test_resume_refuses_an_edited_epoch(tiny_run, tmp_path, epoch):
    from frpt.errors import CheckpointError
    out = _copy(tiny_run, tmp_path / "e")
    card = json.loads((out / "card.json").read_text())
    card["epoch"] = epoch
    (out / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="records epoch"):
        _tiny_run(out, resume=True)


def test_resume_survives_a_garbled_log_and_cleans_orphans(tiny_run, tmp_path):
    out = _copy(tiny_run, tmp_path / "g")
    good = read_log(out)
    (out / "log.csv").write_text("epoch,train_loss\nnot-a-number,1\n2,9.9\n,\n" + "\x00garbage\n")
    # what a kill between writing epoch 2's tensors and its card leaves behind, plus a temp file
    (out / "model-e0002.safetensors").write_bytes(b"half")
    (out / "train-state-e0002.safetensors").write_bytes(b"half")
    (out / ".card.json.abc123.tmp").write_text("{")
    (out / "model-e0007.safetensors").write_bytes(b"orphan from an older kill")
    card = _tiny_run(out, resume=True)
    assert card["epoch"] == 2
    rows = read_log(out)
    assert [r["epoch"] for r in rows] == ["2"]  # garbled rows dropped (epoch 1's row was lost with the log)
    assert float(rows[0]["train_loss"]) != 9.9
    assert sorted(os.listdir(out)) == ["card.json", "log.csv", "model-e0002.safetensors",
                                       "train-state-e0002.safetensors"]
    load_checkpoint(out)
    assert good[0]["epoch"] == "1"


def test_written_files_are_not_private(tiny_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tiny_run):
        assert (tiny_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
