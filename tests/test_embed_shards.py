"""Gallery embedding of an ImageFolder in resumable shards: a corrupt image is skipped and listed (never fatal), and a
run stopped after its first shard continues without recomputing it and ends with the uninterrupted run's embeddings."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frpt.checkpoint import load_checkpoint, save_checkpoint
from frpt.config import model_config
from frpt.data import build_dataset, build_transform
from frpt.gallery import gallery_embeddings, gallery_file, load_gallery, manifest_file
from frpt.models import build_model

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
SHARD = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 classes (a, b train; c, d test), 7 test images of which one is not an image at all."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for cls, count in (("a", 2), ("b", 2), ("c", 4), ("d", 3)):
        (root / cls).mkdir()
        for k in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    (root / "c" / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")  # sorts between 1.png and 2.png
    return root


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model(model_config("paper", "frpt", num_classes=2, input_size=SIZE))
    save_checkpoint(tmp_path / "ckpt", model, classes=["a", "b"], dataset={"name": "folder", "root": None})
    return tmp_path / "ckpt"


class _Counting(torch.utils.data.Dataset):
    """Counts the images read (the work done), delegating everything else to the dataset."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Stop(Exception):
    pass


def _test_split(root: Path) -> _Counting:
    return _Counting(build_dataset("folder", "test", root=str(root), transform=build_transform(SIZE, train=False)))


def _embed(checkpoint: Path, dataset, root: Path, **kwargs):
    """Images read in this process (workers=0), so ``_Counting`` sees every read."""
    model, card = load_checkpoint(checkpoint)
    return gallery_embeddings(model, card, dataset, root=root, batch_size=2, progress=False, shard_size=SHARD,
                              workers=0, **kwargs)


def test_a_corrupt_image_is_skipped_and_listed(folder, checkpoint):
    data = _test_split(folder)
    bad = str(folder / "c" / "2.jpg")
    assert len(data) == 8 and bad in [s for s, _ in data.samples]
    gallery = _embed(checkpoint, data, folder)
    assert gallery.skipped == [bad]
    assert gallery.ids == [s for s, _ in data.samples if s != bad]
    assert gallery.embeddings.after.shape[0] == 7 == len(gallery.embeddings.labels)
    assert list(gallery.embeddings.labels) == [y for s, y in data.samples if s != bad]
    # after the skipped image, row r holds dataset image r + 1: the app looks images up through these
    bad_index = [s for s, _ in data.samples].index(bad)
    assert [data.samples[i][0] for i in gallery.indices] == gallery.ids
    assert gallery.row_of(bad_index) is None and gallery.row_of(bad_index + 1) == bad_index
    manifest = json.loads(manifest_file(gallery.path).read_text())
    assert manifest["complete"] is True and [s["id"] for s in manifest["skipped"]] == [bad]
    assert "not a readable image" in manifest["skipped"][0]["reason"]
    assert not gallery.path.with_name(f"{gallery.path.stem}.parts").exists()  # the shards are gone once assembled
    # the stored gallery is reused as it is (the skipped image counts as done), and reads like any gallery file
    again = _test_split(folder)
    assert _embed(checkpoint, again, folder).ids == gallery.ids and again.reads == 0
    stored = load_gallery(gallery_file(load_checkpoint(checkpoint)[1], data, folder))
    np.testing.assert_array_equal(stored.embeddings.after, gallery.embeddings.after)
    np.testing.assert_array_equal(stored.indices, gallery.indices)
    # the vectors are mapped from the file, read-only: sessions share the page cache instead of each holding a copy
    assert all(isinstance(a, np.memmap) and not a.flags.writeable
               for a in (stored.embeddings.before, stored.embeddings.after))


def test_an_interrupted_run_resumes_after_its_finished_shards(folder, checkpoint):
    def stop_after_first(k: int) -> None:
        raise _Stop

    first, seen = _test_split(folder), []
    with pytest.raises(_Stop):
        _embed(checkpoint, first, folder, on_shard=stop_after_first, on_images=seen.append)
    assert seen == [2]  # progress after each batch (of 2), in the calling process
    assert first.reads == SHARD  # one shard was embedded and committed
    path = gallery_file(load_checkpoint(checkpoint)[1], first, folder)
    parts = path.with_name(f"{path.stem}.parts")
    assert not path.exists() and sorted(p.name for p in parts.iterdir()) == ["shard-00000.npz"]
    assert list(json.loads(manifest_file(path).read_text())["shards"]) == ["0"]
    stamp = (parts / "shard-00000.npz").stat().st_mtime_ns

    committed = []

    def check(k: int) -> None:
        committed.append(k)
        assert (parts / "shard-00000.npz").stat().st_mtime_ns == stamp  # never rewritten

    resumed_data, seen = _test_split(folder), []
    resumed = _embed(checkpoint, resumed_data, folder, on_shard=check, on_images=seen.append)
    assert committed == [1, 2, 3] and resumed_data.reads == len(resumed_data) - SHARD
    assert seen == list(range(SHARD + 2, len(resumed_data) + 1, 2))  # counting from the shard already done
    assert resumed.skipped == [str(folder / "c" / "2.jpg")]

    fresh_data = _test_split(folder)
    fresh = _embed(checkpoint, fresh_data, folder, recompute=True)
    assert fresh_data.reads == len(fresh_data)
    assert fresh.ids == resumed.ids and fresh.skipped == resumed.skipped
    for name in ("before", "after", "labels"):
        np.testing.assert_array_equal(getattr(fresh.embeddings, name), getattr(resumed.embeddings, name))


def test_a_damaged_shard_is_recomputed(folder, checkpoint):
    def stop_after_second(k: int) -> None:
        if k == 1:
            raise _Stop

    data = _test_split(folder)
    with pytest.raises(_Stop):
        _embed(checkpoint, data, folder, on_shard=stop_after_second)
    path = gallery_file(load_checkpoint(checkpoint)[1], data, folder)
    (path.with_name(f"{path.stem}.parts") / "shard-00000.npz").write_bytes(b"half a file")
    resumed = _test_split(folder)
    gallery = _embed(checkpoint, resumed, folder)
    assert resumed.reads == len(resumed) - SHARD  # shard 1 kept, shard 0 (damaged) redone
    assert len(gallery.ids) == 7


class _Paced(_Counting):
    """Signals its first read, then waits for ``go`` before each read: the run holds the gallery while it waits."""

    def __init__(self, inner):
        super().__init__(inner)
        self.started, self.go = threading.Event(), threading.Event()

    def __getitem__(self, i):
        self.started.set()
        self.go.wait(timeout=60)
        return super().__getitem__(i)


def test_a_second_run_on_the_same_gallery_waits_and_reuses_the_first(folder, checkpoint):
    first = _Paced(_test_split(folder).inner)
    results: dict[str, object] = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", _embed(checkpoint, first, folder)))
    worker.start()
    assert first.started.wait(timeout=60)  # the first run is inside its first shard
    second = _test_split(folder)
    waiter = threading.Thread(target=lambda: results.setdefault("second", _embed(checkpoint, second, folder)))
    waiter.start()
    waiter.join(timeout=2)
    assert waiter.is_alive() and second.reads == 0  # blocked on the first run's lock, not embedding on its own
    first.go.set()
    worker.join(timeout=120)
    waiter.join(timeout=120)
    assert second.reads == 0 and first.reads == len(first)  # the images were read once, by the first run
    np.testing.assert_array_equal(results["second"].embeddings.after, results["first"].embeddings.after)


def test_cli_embed_reports_skipped_images_in_one_line(folder, checkpoint):
    proc = subprocess.run([sys.executable, "-m", "frpt", "embed", "--checkpoint", str(checkpoint), "--dataset",
                           "folder", "--root", str(folder), "--shard-size", "3", "--no-umap", "--quiet",
                           "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 7 and result["skipped"] == 1 and Path(result["manifest"]).is_file()
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2.jpg" in warnings[0] and "1 unreadable image" in warnings[0]


def test_cli_embed_maps_the_whole_split_only_while_it_is_small(folder, checkpoint, monkeypatch, capsys):
    """A million-image gallery would spend hours on a whole-split UMAP: beyond FULL_MAP_MAX_POINTS only the page's
    opening subsample is mapped."""
    from frpt import cli, projection

    args = ["embed", "--checkpoint", str(checkpoint), "--dataset", "folder", "--root", str(folder), "--quiet",
            "--threads", "1"]
    monkeypatch.setattr(projection, "DEFAULT_MAP_POINTS", 5)  # the page's opening subsample: 5 of the 7 images
    monkeypatch.setattr(projection, "FULL_MAP_MAX_POINTS", 6)  # the gallery holds 7 readable images
    assert cli.main(args) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["umap"]) == 1
    monkeypatch.setattr(projection, "FULL_MAP_MAX_POINTS", 7)
    assert cli.main(args) == 0
    assert len(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["umap"]) == 2


def test_stored_embeddings_supersede_an_interrupted_run_and_must_match_the_split(folder, checkpoint):
    """store_gallery (training's final test evaluation): the gallery `frpt embed` then reads as is; rows that do
    not follow the split's order are refused before anything is written."""
    from frpt.engine import Plan
    from frpt.evaluation import Embeddings
    from frpt.gallery import store_gallery

    data = _test_split(folder)
    model, card = load_checkpoint(checkpoint)
    n = len(data)
    labels = np.array([y for _, y in data.samples])
    rng = np.random.default_rng(0)
    emb = Embeddings(rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32), labels,
                     Plan("onnxruntime", "fp32"))
    path = gallery_file(card, data, folder)
    with pytest.raises(ValueError, match="do not match"):
        store_gallery(card, data, folder, Embeddings(emb.before, emb.after, labels[::-1], emb.plan))
    assert not path.exists()
    parts = path.with_name(f"{path.stem}.parts")
    parts.mkdir(parents=True)  # left by a killed `frpt embed` run on these weights
    manifest_file(path).write_text("{}")
    stored = store_gallery(card, data, folder, emb)
    assert not parts.exists() and not manifest_file(path).exists()
    assert (stored.engine, stored.precision) == ("onnxruntime", "fp32")  # the plan that computed them, as recorded
    assert stored.ids == [s for s, _ in data.samples]
    np.testing.assert_array_equal(stored.embeddings.after, emb.after)
    again = gallery_embeddings(model, card, data, root=folder, progress=False)  # reads, embeds nothing
    assert data.reads == 0 and np.array_equal(again.embeddings.before, emb.before)
