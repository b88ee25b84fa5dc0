"""Hostile-input corpus: generate bad images, checkpoints and dataset roots in a temp dir, feed each to the library,
and count how many were handled (one FRPTError sentence, or a successful load where the change is harmless).

"Unhandled" means any other exception type, a multi-line message, or - for pickles - the payload having run.
Seeded; prints one JSON summary line (last line of stdout). Example:
  python bench/hostile_corpus.py --seed 0 --flips 120
  python bench/hostile_corpus.py --append-results bench/RESULTS.md   # also appends a markdown section
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import random
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frpt.checkpoint import card_seal, load_checkpoint, save_checkpoint  # noqa: E402
from frpt.config import model_config  # noqa: E402
from frpt.data import build_dataset, open_image  # noqa: E402
from frpt.errors import FRPTError  # noqa: E402
from frpt.models import build_model  # noqa: E402

WEIGHTS = "model-e0001.safetensors"


class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []

    def run(self, kind: str, label: str, fn, harmless_ok: bool = False) -> None:
        """``fn()`` must raise a one-sentence FRPTError (or, if ``harmless_ok``, succeed)."""
        c = self.counts[kind]
        c["tried"] += 1
        try:
            fn()
        except FRPTError as exc:
            msg = str(exc)
            if msg and "\n" not in msg and msg.endswith("."):
                c["handled"] += 1
                c["refused"] += 1
            else:
                self.failures.append(f"{kind}/{label}: badly formatted message {msg!r}")
            return
        except Exception as exc:  # noqa: BLE001 - that is what we count
            self.failures.append(f"{kind}/{label}: {type(exc).__name__}: {exc}"[:300])
            return
        if harmless_ok:
            c["handled"] += 1
            c["loaded"] += 1
        else:
            self.failures.append(f"{kind}/{label}: accepted")


# ---------------------------------------------------------------------------------------------- images

def image_corpus(tmp: Path, rng: random.Random) -> list[tuple[str, object]]:
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(png, "PNG")
    jpg = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(jpg, "JPEG")
    png, jpg = png.getvalue(), jpg.getvalue()
    bomb = io.BytesIO()
    Image.new("1", (1, 1)).save(bomb, "PNG")
    bomb = bytearray(bomb.getvalue())
    bomb[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width/height: 3.6 G pixels, CRC now wrong too
    items: list[tuple[str, object]] = [
        ("empty", b""), ("html", b"<!doctype html><html><body>x</body></html>"), ("svg", b"<svg xmlns='x'></svg>"),
        ("pdf", b"%PDF-1.4\n..."), ("text", b"hello world"), ("bomb", bytes(bomb)),
        ("pickle", pickle.dumps({"a": 1})), ("oversize", b"\xff\xd8" + bytes(51 * 2**20)),
    ]
    for cut in (8, 20, 40, len(png) // 2):
        items.append((f"png-trunc{cut}", png[:cut]))
    for cut in (12, 13):  # only the trailer (IEND, last CRC byte) lost: every pixel is there, decoding is correct
        items.append((f"png-trailer-cut{cut} (harmless: all pixel data present)", png[:-cut]))
    for cut in (2, 10, len(jpg) // 2, len(jpg) - 2):
        items.append((f"jpeg-trunc{cut}", jpg[:cut]))
    for i in range(12):
        items.append((f"random{i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))))
    d = tmp / "images"
    d.mkdir()
    (d / "folder.jpg").mkdir()
    items += [("missing-path", d / "absent.jpg"), ("directory", d / "folder.jpg")]
    raw = os.path.join(os.fsencode(d), b"bad-\xff-name.png")
    with open(raw, "wb") as fh:
        fh.write(png[:30])
    items.append(("non-utf8-truncated", os.fsdecode(raw)))
    return items


# ---------------------------------------------------------------------------------------------- checkpoints

class Evil:
    """A pickle payload: unpickling it creates the file ``marker`` (a stand-in for arbitrary code). Shared with
    tests/test_hostile_checkpoints.py."""

    def __init__(self, marker: str | os.PathLike):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _edit(folder: Path, change, seal: bool = True) -> None:
    """Edit the card, re-sealing it by default so the field checks behind the seal are exercised."""
    card = json.loads((folder / "card.json").read_text())
    change(card)
    if seal:
        card["sealed_sha256"] = card_seal(card)
    (folder / "card.json").write_text(json.dumps(card))


def _reseal(folder: Path) -> None:
    digest = hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()
    _edit(folder, lambda c: c["files"].update(weights=WEIGHTS, weights_sha256=digest))


MUTATIONS = ("flip", "run", "truncate", "insert")


def mutate(data: bytes, rng: random.Random, top: int, kind: int) -> tuple[str, bytes]:
    """One seeded mutation of ``data`` at a position below ``top``: MUTATIONS[kind] = flip one bit, overwrite a
    4-byte run, truncate there, or insert a byte that breaks JSON. Returns ("kind@position", the bytes). Shared
    with tests/test_hostile_checkpoints.py."""
    b = bytearray(data)
    pos = rng.randrange(top)
    if kind == 0:
        b[pos] ^= 1 << rng.randrange(8)
    elif kind == 1:
        b[pos:pos + 4] = bytes(rng.randrange(256) for _ in range(4))
    elif kind == 2:
        del b[pos:]
    else:
        b[pos:pos] = rng.choice([b" ", b"\n", b"\x00", b'"', b"}", b"9"])
    return f"{MUTATIONS[kind]}@{pos}", bytes(b)


def checkpoint_cases(tally: Tally, tmp: Path, rng: random.Random, flips: int) -> bool:
    torch.manual_seed(0)
    base = tmp / "base"
    save_checkpoint(base, build_model(model_config("paper", "dpp+pt", num_classes=3, input_size=64)),
                    classes=["a", "b", "c"], dataset={"name": "synthetic", "root": None}, epoch=1)
    marker = tmp / "PWNED"
    payload = pickle.dumps(Evil(str(marker)))
    work = tmp / "work"

    def fresh() -> Path:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(base, work)
        return work

    # pickles: as the checkpoint path, renamed as the weights file (raw and resealed), renamed as card.json
    for suffix in (".pt", ".pth", ".ckpt", ".pkl", ".bin"):
        p = tmp / f"evil{suffix}"
        p.write_bytes(payload)
        tally.run("checkpoint: pickle payloads", f"path{suffix}", lambda p=p: load_checkpoint(p))
    torch.save({"m": Evil(str(marker))}, tmp / "evil_zip.pt")
    for raw in (payload, (tmp / "evil_zip.pt").read_bytes()):
        for reseal in (False, True):
            w = fresh()
            (w / WEIGHTS).write_bytes(raw)
            if reseal:
                _reseal(w)
            tally.run("checkpoint: pickle payloads", f"weights-reseal={reseal}", lambda: load_checkpoint(w))
        w = fresh()
        (w / "card.json").write_bytes(raw)
        tally.run("checkpoint: pickle payloads", "card", lambda: load_checkpoint(w))
    ev = tmp / "backbone.pth"
    torch.save({"state_dict": Evil(str(marker))}, ev)
    tally.run("checkpoint: pickle payloads", "backbone-weights", lambda: load_checkpoint(base, backbone_weights=ev))

    # targeted card edits
    edits = {
        "newer-version": lambda c: c.update(format_version=2), "version-str": lambda c: c.update(format_version="1"),
        "traversal": lambda c: c["files"].update(weights="../base/" + WEIGHTS),
        "absolute": lambda c: c["files"].update(weights="/etc/passwd"),
        "no-sha": lambda c: c["files"].pop("weights_sha256"), "other-backbone": lambda c: (
            c["model"].update(backbone="resnet18"), c["backbone"].update(name="resnet18", weights_sha256=None)),
        "other-preset": lambda c: (c["model"].update(saliency_stride=16, saliency_kernel=1, preset="official"),
                                   c.update(preset="official")),
        "half-edited-preset": lambda c: c.update(preset="official"),
        "classes-none": lambda c: c.update(classes=None),
        "num-classes-huge": lambda c: c["model"].update(num_classes=10**12),
        "grid-huge": lambda c: c["model"].update(grid_size=10**6),
        "pooling-unknown": lambda c: c["model"].update(pooling="x"),
        "backbone-sha-other": lambda c: c["backbone"].update(weights_sha256="0" * 64),
        "deep-json": None, "missing-card": None, "missing-weights": None, "unsealed grid_padding": None,
        "unsealed class name": None,
    }
    for label, change in edits.items():
        w = fresh()
        if label == "deep-json":
            (w / "card.json").write_text("[" * 100_000 + "]" * 100_000)
        elif label == "missing-card":
            (w / "card.json").unlink()
        elif label == "missing-weights":
            (w / WEIGHTS).unlink()
        elif label == "unsealed grid_padding":
            _edit(w, lambda c: c["model"].update(grid_padding=38), seal=False)
        elif label == "unsealed class name":
            _edit(w, lambda c: c.update(classes=["a", "b", "x"]), seal=False)
        else:
            _edit(w, change)
        tally.run("checkpoint: targeted card edits", label, lambda: load_checkpoint(w))

    # tensor-level damage, resealed so the sha256 gate is not what refuses it
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(base / WEIGHTS))
    key = sorted(tensors)[0]
    damage = {"shape": lambda t: t.update({key: torch.zeros(2)}), "dtype": lambda t: t.update({key: t[key].double()}),
              "nan": lambda t: t[key].view(-1).__setitem__(0, float("nan")), "missing": lambda t: t.pop(key),
              "extra": lambda t: t.update({"x": torch.zeros(1)})}
    for label, change in damage.items():
        w = fresh()
        t = {k: v.clone() for k, v in tensors.items()}
        change(t)
        save_file(t, str(w / WEIGHTS))
        _reseal(w)
        tally.run("checkpoint: tensor damage (resealed)", label, lambda: load_checkpoint(w))

    # fuzz: card bytes; weights header bytes (resealed); weights anywhere (sha256 gate)
    card_raw, w_raw = (base / "card.json").read_bytes(), (base / WEIGHTS).read_bytes()
    header = 8 + struct.unpack("<Q", w_raw[:8])[0]
    for i in range(flips):
        w = fresh()
        (w / "card.json").write_bytes(mutate(card_raw, rng, len(card_raw), rng.randrange(4))[1])
        tally.run("checkpoint: card.json byte fuzz", str(i), lambda: load_checkpoint(w), harmless_ok=True)
    for i in range(flips // 2):
        w = fresh()
        (w / WEIGHTS).write_bytes(mutate(w_raw, rng, header, rng.randrange(4))[1])
        _reseal(w)
        tally.run("checkpoint: safetensors header fuzz (resealed)", str(i), lambda: load_checkpoint(w),
                  harmless_ok=True)
    for i in range(flips // 4):
        w = fresh()
        mutated = mutate(w_raw, rng, len(w_raw), rng.randrange(4))[1]
        if mutated == w_raw:
            continue
        (w / WEIGHTS).write_bytes(mutated)
        tally.run("checkpoint: safetensors anywhere (sha256 gate)", str(i), lambda: load_checkpoint(w))
    return marker.exists()


# ---------------------------------------------------------------------------------------------- datasets

def _cub(base: Path) -> Path:
    (base / "images").mkdir(parents=True)
    cls, imgs, labs = [], [], []
    k = 0
    for c in range(1, 5):
        cls.append(f"{c} {c:03d}.Bird")
        for j in range(2):
            k += 1
            imgs.append(f"{k} {c:03d}.Bird/{j}.jpg")
            labs.append(f"{k} {c}")
            (base / "images" / f"{c:03d}.Bird").mkdir(exist_ok=True)
            Image.new("RGB", (16, 16)).save(base / "images" / f"{c:03d}.Bird" / f"{j}.jpg")
    for name, lines in (("classes.txt", cls), ("images.txt", imgs), ("image_class_labels.txt", labs)):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


def dataset_cases(tally: Tally, tmp: Path, rng: random.Random) -> None:
    n = 0

    def root() -> Path:
        nonlocal n
        n += 1
        return _cub(tmp / f"ds{n}" / "CUB_200_2011")

    cases = {
        "missing images.txt": lambda b: (b / "images.txt").unlink(),
        "missing classes.txt": lambda b: (b / "classes.txt").unlink(),
        "missing labels": lambda b: (b / "image_class_labels.txt").unlink(),
        "images absent": lambda b: shutil.rmtree(b / "images"),
        "empty class": lambda b: (b / "image_class_labels.txt").write_text("".join(f"{k} 1\n" for k in range(1, 9))),
        "label for unknown class": lambda b: (b / "image_class_labels.txt").write_text("1 99\n"),
        "garbled line": lambda b: (b / "images.txt").write_text("oops\n"),
        "non-utf8 name": lambda b: (b / "images.txt").write_bytes(b"1 001.Bird/\xff.jpg\n"),
        "binary metadata": lambda b: (b / "classes.txt").write_bytes(bytes(rng.randrange(256) for _ in range(300))),
        "bad boxes": lambda b: (b / "bounding_boxes.txt").write_text("1 a b c d\n"),
    }
    for label, damage in cases.items():
        b = root()
        damage(b)
        tally.run("dataset roots (CUB layout)", label, lambda: build_dataset("cub", "train", root=b))
    f = tmp / "folder"
    for c in ("a", "b"):
        (f / c).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(f / c / "x.jpg")
    for c in ("c", "d"):
        (f / c).mkdir()
    (tmp / "onlyone" / "a").mkdir(parents=True)
    for label, r in (("absent root", tmp / "nope"), ("file as root", tmp / "folder" / "a" / "x.jpg"),
                     ("empty classes", f), ("one class", tmp / "onlyone")):
        tally.run("dataset roots (folder layout)", label, lambda r=r: build_dataset("folder", "test", root=r))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flips", type=int, default=120, help="card.json mutants (header: half, anywhere: a quarter)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--append-results", help="append a '## Hostile inputs' section to this markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    tally = Tally()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="frpt-hostile-") as tmp_s:
        tmp = Path(tmp_s)
        for label, item in image_corpus(tmp, rng):
            tally.run("images", label, lambda item=item: open_image(item), harmless_ok="harmless" in label)
        pwned = checkpoint_cases(tally, tmp, rng, args.flips)
        dataset_cases(tally, tmp, rng)
    summary = {"seed": args.seed, "seconds": round(time.perf_counter() - started, 1), "payload_executed": pwned,
               "kinds": {k: dict(v) for k, v in tally.counts.items()},
               "tried": sum(v["tried"] for v in tally.counts.values()),
               "handled": sum(v["handled"] for v in tally.counts.values()), "unhandled": tally.failures}
    for line in tally.failures:
        print("UNHANDLED", line, file=sys.stderr)
    if args.append_results:
        _append(Path(args.append_results), summary, args)
    print(json.dumps(summary))
    return 0 if not tally.failures and not pwned else 1


def _append(path: Path, summary: dict, args: argparse.Namespace) -> None:
    rows = ["| kind | tried | handled | refused (one sentence) | loaded (harmless change) |", "|---|---|---|---|---|"]
    for kind, c in summary["kinds"].items():
        cells = [c.get(k, 0) for k in ("tried", "handled", "refused", "loaded")]
        rows.append(f"| {kind} | " + " | ".join(map(str, cells)) + " |")
    text = (f"\n## Hostile inputs\n\n`python bench/hostile_corpus.py --seed {args.seed} --flips {args.flips}` "
            f"({time.strftime('%Y-%m-%d')}, {summary['seconds']} s, CPU). Handled = one FRPTError sentence, or a "
            "successful load where the mutation is harmless (e.g. whitespace or a changed `created` date in "
            "card.json); anything else (another exception type, a multi-line message, a pickle payload running) "
            "is unhandled.\n\n" + "\n".join(rows) +
            f"\n\nTotal: {summary['handled']} of {summary['tried']} handled; pickle payload executed: "
            f"{'yes' if summary['payload_executed'] else 'never'}.\n")
    if not path.exists():
        path.write_text("# Benchmarks\n")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    raise SystemExit(main())
