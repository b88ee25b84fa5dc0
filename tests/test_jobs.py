"""Background gallery jobs (frpt.jobs, issue 27): the split is embedded in a class-stratified order whose prefixes
are usable galleries; a job's gallery is `frpt embed`'s to 1e-6; a killed job continues from its committed shards;
every browser session shares one job; a page on a partial gallery says so."""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from frpt import jobs
from frpt.checkpoint import load_checkpoint
from frpt.data import build_dataset, build_transform
from frpt.demo import available_demos
from frpt.gallery import (embedding_order, gallery_embeddings, gallery_file, gallery_progress, load_gallery,
                          manifest_file, partial_gallery, shard_bounds)
from frpt.metrics import recall_at_k

SHARD = 64  # the synthetic test split's 240 images in shards of 64, 64, 64, 48


@pytest.fixture
def demo(tmp_path) -> Path:
    """The shipped demo FRPT without any stored gallery, in a folder of this test."""
    folder = tmp_path / "frpt"
    shutil.copytree(available_demos()["frpt"], folder, ignore=shutil.ignore_patterns("gallery"))
    return folder


@pytest.fixture
def run_jobs(monkeypatch):
    monkeypatch.setenv(jobs.JOBS_ENV, "1")


def _split(card):
    return build_dataset("synthetic", "test", transform=build_transform(card["input_size"], train=False))


def _reference(folder: Path, tmp_path: Path):
    """`frpt embed`'s gallery of the same checkpoint, computed in this process in another folder."""
    other = tmp_path / "reference"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("gallery"))
    model, card = load_checkpoint(other)
    return gallery_embeddings(model, card, _split(card), progress=False, shard_size=SHARD)


def _wait(predicate, timeout: float = 240.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("labels", [np.repeat(np.arange(10), 24), np.repeat(np.arange(4), [5, 50, 20, 100])])
def test_every_prefix_of_the_embedding_order_holds_every_class_in_proportion(labels):
    order = embedding_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))  # a permutation of the split
    np.testing.assert_array_equal(order, embedding_order(labels))  # reproducible: the snapshot of a prefix is fixed
    counts = np.bincount(labels)
    for m in (len(counts), 2 * len(counts), len(labels) // 3, len(labels)):
        got = np.bincount(labels[order[:m]], minlength=len(counts))
        assert np.all(np.abs(got - m * counts / len(labels)) <= 1.0), (m, got)


@pytest.mark.parametrize("labels", [np.repeat(np.arange(10), 24), np.repeat(np.arange(4), [5, 50, 20, 100])])
def test_each_class_is_embedded_from_the_image_a_page_opens_it_on(labels):
    # A page opens a class on its first image (dataset order): that image is its class's first row embedded, the
    # rest of the class a shuffled sample after it, not its next files.
    order = embedding_order(labels)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        embedded = [i for i in order.tolist() if labels[i] == c]
        assert embedded[0] == members[0] and (len(members) < 5 or embedded[1:] != sorted(embedded[1:]))
    if len(set(np.bincount(labels))) == 1:  # classes of one size: every class head in the first two rounds
        heads = {int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)}
        assert heads <= set(order[:2 * len(heads)].tolist())


def test_every_prefix_of_cub_test_order_covers_all_100_classes(cub_root):
    ds = build_dataset("cub", "test", root=str(cub_root))
    labels = np.array([y for _, y in ds.samples])
    first = shard_bounds(len(ds))[0][1]
    order = embedding_order(labels)
    assert first <= 200 and len(np.unique(labels[order[:first]])) == 100
    assert {int(np.flatnonzero(labels == c)[0]) for c in range(100)} <= set(order[:first].tolist())  # class heads


def test_shards_start_small_and_double_to_the_shard_size():
    assert shard_bounds(5924) == [(0, 200), (200, 600), (600, 1400), (1400, 2424), (2424, 3448), (3448, 4472),
                                  (4472, 5496), (5496, 5924)]
    assert shard_bounds(7, shard_size=2) == [(0, 2), (2, 4), (4, 6), (6, 7)]


@pytest.mark.parametrize("child", ["fresh", "spare", "stale spare"])
def test_a_job_stores_what_frpt_embed_stores(demo, tmp_path, run_jobs, monkeypatch, child):
    # "spare": the server's queue runs the job in a child started (and imported) ahead of it; "stale spare": one
    # started under another environment is not used (a fresh child runs the job).
    _, card = load_checkpoint(demo)
    ds = _split(card)
    queue = jobs.JobQueue(spare=child != "fresh")
    starter = threading.Thread(target=queue._start_worker)  # as a page's run does: its thread ends at once,
    starter.start()  # and the spare (the kernel's parent-death signal follows the forking thread) must outlive it
    starter.join()
    time.sleep(1.0)
    spare = queue._spare[0].pid if queue._spare else None
    if child == "stale spare":
        monkeypatch.setenv("FRPT_TEST_CHANGED", "1")
    try:
        job = queue.submit(jobs.gallery_job(str(demo), card, ds, None, shard_size=SHARD), urgent=True)
        assert queue.submit(jobs.gallery_job(str(demo), card, ds, None, shard_size=SHARD)) is job  # one per gallery
        _wait(lambda: queue._proc is not None or not job.active, what="the job's child")
        ran_in = queue._proc.pid if queue._proc is not None else None
        assert queue.wait(job.key, timeout=300).state == "done", job.error
        if child == "spare":
            assert ran_in == spare and queue._spare is not None and queue._spare[0].pid != spare  # and refilled
        else:
            assert spare is None or ran_in != spare
    finally:
        queue.close()
    stored, reference = load_gallery(gallery_file(card, ds, None)), _reference(demo, tmp_path)
    assert stored.ids == reference.ids == [s for s, _ in ds.samples]  # dataset order, whatever the embedding order
    np.testing.assert_allclose(stored.embeddings.after, reference.embeddings.after, atol=1e-6)
    np.testing.assert_allclose(stored.embeddings.before, reference.embeddings.before, atol=1e-6)
    assert job.done() == len(ds) and queue.submit(jobs.gallery_job(str(demo), card, ds, None)) is job


def test_a_killed_job_continues_from_its_committed_shards(demo, tmp_path, run_jobs):
    _, card = load_checkpoint(demo)
    ds = _split(card)
    path = gallery_file(card, ds, None)
    queue = jobs.JobQueue()
    job = queue.submit(jobs.gallery_job(str(demo), card, ds, None, shard_size=SHARD), urgent=True)
    _wait(lambda: gallery_progress(card, ds, None) >= SHARD, what="the first shard")
    first = json.loads(manifest_file(path).read_text())["shards"]["0"]
    os.kill(queue._proc.pid, signal.SIGKILL)  # as a server killed mid-job leaves it
    assert queue.wait(job.key, timeout=60).state == "failed" and "SIGKILL" in job.error
    part = partial_gallery(card, ds, None)
    assert part is not None and not part.complete and part.done >= SHARD
    assert len(np.unique(part.embeddings.labels)) == len(ds.classes)  # the first shard holds every class

    again = jobs.JobQueue()  # a restarted server
    job = again.submit(jobs.gallery_job(str(demo), card, ds, None, shard_size=SHARD), urgent=True)
    _wait(lambda: job.state != "running" or (jobs._read_status(job.status_file) or {}).get("done", 0) > 0,
          what="the resumed job's first batch")
    status = jobs._read_status(job.status_file)
    if status is not None and job.state == "running":  # counted from the committed shards, not from zero
        assert status["done"] > SHARD
    assert again.wait(job.key, timeout=300).state == "done", job.error
    manifest = json.loads(manifest_file(path).read_text())
    assert manifest["complete"] and first["rows"] == SHARD
    stored, reference = load_gallery(path), _reference(demo, tmp_path)
    np.testing.assert_allclose(stored.embeddings.after, reference.embeddings.after, atol=1e-6)


def test_a_partial_snapshot_is_the_same_rows_before_and_after_the_gallery_completes(demo):
    model, card = load_checkpoint(demo)
    ds = _split(card)

    class Stop(Exception):
        pass

    def stop_after(k: int) -> None:
        if k == 1:
            raise Stop

    with pytest.raises(Stop):
        gallery_embeddings(model, card, ds, progress=False, shard_size=SHARD, on_shard=stop_after)
    part = partial_gallery(card, ds, None)
    assert part.done == 2 * SHARD == gallery_progress(card, ds, None) and not part.complete
    assert np.all(np.diff(part.indices) > 0) and part.ids == [ds.samples[i][0] for i in part.indices]
    full = gallery_embeddings(model, card, ds, progress=False, shard_size=SHARD)
    again = partial_gallery(card, ds, None, ready=part.done)  # now cut from the stored file
    np.testing.assert_array_equal(again.indices, part.indices)
    np.testing.assert_allclose(again.embeddings.after, part.embeddings.after, atol=1e-6)
    assert full.complete and partial_gallery(card, ds, None).done == len(ds)


def _app(demo: Path, page: str) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.session_state["frpt.source"] = at.session_state["w.source"] = "Folder"
    at.session_state["frpt.folder"] = at.session_state["w.folder"] = str(demo)
    return at.switch_page(page).run()


def test_pages_on_a_partial_gallery_say_so_and_two_sessions_share_one_job(demo, monkeypatch):
    """Jobs are off here (FRPT_BACKGROUND_JOBS=0, the suite's setting): the job is queued, never run, and the first
    shard comes from an interrupted in-process run, so the pages are seen in their partial state."""
    monkeypatch.setenv(jobs.BACKGROUND_ENV, "0")  # every split gets a background job
    monkeypatch.setattr(jobs, "_QUEUE", jobs.JobQueue())
    model, card = load_checkpoint(demo)
    ds = _split(card)

    at = _app(demo, "pages/4_Retrieval.py")
    assert not at.exception, [e.value for e in at.exception]
    assert any("Embedding the first" in i.value for i in at.info)  # nothing ready: the waiting note, no ranking
    assert not at.get("image")

    class Stop(Exception):
        pass

    def stop(k: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        gallery_embeddings(model, card, ds, progress=False, shard_size=SHARD, on_shard=stop)
    for page in ("pages/4_Retrieval.py", "pages/3_Embedding_space.py", "pages/1_Prompt_explorer.py"):
        at = _app(demo, page)  # a second browser session
        assert not at.exception, (page, [e.value for e in at.exception])
        notes = [i.value for i in at.info if "Working on" in i.value]
        assert notes and f"{SHARD} of {len(ds)}" in notes[0], (page, [i.value for i in at.info])
    at = _app(demo, "pages/0_Home.py")  # Home's live figures: of the rows ready, named by them, never "live"
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"{SHARD} of {len(ds)}" in i.value for i in at.info if "Working on" in i.value)
    (table,) = [d.value for d in at.dataframe if f"{SHARD} of {len(ds)} images, after the head" in d.value.columns]
    assert not any(c.startswith("live") for c in table.columns)
    part = partial_gallery(card, ds, None)
    r1 = table.set_index("metric").loc["recall@1", f"{SHARD} of {len(ds)} images, after the head"]
    assert r1 == pytest.approx(recall_at_k(part.embeddings.after, part.embeddings.labels, ks=(1,))["recall@1"])
    at = _app(demo, "pages/7_AB_retrieval.py")  # B = this checkpoint: partial; A = a demo, stored or queued
    assert not at.exception, [e.value for e in at.exception]
    assert any("Working on" in i.value or "Embedding the first" in i.value for i in at.info)
    assert len([j for j in jobs.queue().jobs() if j.key == str(gallery_file(card, ds, None))]) == 1  # one job
    assert not list(gallery_file(card, ds, None).parent.glob("*.umap-*"))  # a partial map is never stored


def test_the_launcher_queues_the_offered_galleries_default_first(tmp_path, monkeypatch, cub_root):
    from frpt.ui import launch

    config = tmp_path / "serve.toml"
    config.write_text(f'checkpoints = ["cub/compact-pt", "cub/compact-frpt-288"]\n[datasets]\ncub = "{cub_root}"\n')
    monkeypatch.setenv("FRPT_SERVE", "1")
    monkeypatch.setenv("FRPT_SERVE_CONFIG", str(config))
    served = launch.offered()
    assert [(t, d) for t, _, d, _ in served] == [("cub/compact-pt", "cub"), ("cub/compact-frpt-288", "cub")]
    assert {Path(r).resolve() for *_, r in served} == {cub_root.resolve()}

    monkeypatch.delenv("FRPT_SERVE")
    monkeypatch.setenv("FRPT_CUB_ROOT", str(cub_root))
    local = launch.offered()  # a local server: the shipped CUB checkpoints, the best first; no synthetic demo
    assert local[0][0] == launch.FIRST and {d for _, _, d, _ in local} == {"cub"} and len(local) >= 2
    monkeypatch.delenv("FRPT_CUB_ROOT")
    assert launch.offered() == []  # no dataset folder at hand: nothing to embed ahead
