"""frpt.index: the choice by size and memory budget, save/load, memmapped exact search, approximate recall,
batching and leave-one-out exclusion for every kind."""
from __future__ import annotations

import json

import numpy as np
import pytest

from frpt import index as ix
from frpt.index import RetrievalIndex, choose_spec, make_spec, recall_at_k

pytest.importorskip("faiss")

DIM = 64


def clustered(n: int, seed: int = 0, centres: int = 30, sigma: float = 1.0) -> np.ndarray:
    """Unit vectors around random centres (cosine ~0.5 within a centre, ~0 across): real embeddings' shape."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centres, n)] + sigma * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return clustered(3000)


@pytest.fixture(scope="module")
def built(gallery) -> dict[str, RetrievalIndex]:
    """One index per kind (calibrated to recall@10 0.95 on held-out rows)."""
    return {kind: RetrievalIndex.build(gallery, spec=make_spec(kind, storage, 0, DIM))
            for kind, storage in (("exact", "fp32"), ("ivf", "sq8"), ("hnsw", "fp32"))}


def test_choice_by_size():
    assert choose_spec(10_000, 1280).kind == "exact"
    assert choose_spec(ix.EXACT_MAX_N + 1, 1280).kind == "hnsw"
    big = choose_spec(ix.HNSW_MAX_N + 1, 1280)
    assert big.kind == "ivf" and big.nlist >= 512 and big.storage == "fp32"


def test_choice_by_memory_budget():
    n, d = 1_000_000, 1280
    fp16 = choose_spec(n, d, 3 * 2**30)                              # fp32 codes (5.1 GB) do not fit
    assert (fp16.kind, fp16.storage) == ("hnsw", "fp16")
    sq8 = choose_spec(n, d, 2 * 2**30)                               # the configuration measured at 1M
    assert (sq8.kind, sq8.storage, sq8.rerank) == ("hnsw", "sq8", ix.RERANK)
    pq = choose_spec(n, d, 200 * 2**20)                              # HNSW's graph alone (256 MB) does not fit
    assert (pq.kind, pq.storage) == ("ivf", "pq") and d % pq.pq_m == 0 and pq.index_bytes <= 200 * 2**20
    small = choose_spec(10_000, d, 30 * 2**20)                      # 10k x 1280 fp32 = 51 MB: fp16 exact
    assert (small.kind, small.storage) == ("exact", "fp16")
    with pytest.raises(ValueError, match="fits"):
        choose_spec(n, d, 2**20)


def test_auto_choice_falls_back_to_exact_when_only_an_exhaustive_search_reaches_the_target(gallery, monkeypatch):
    monkeypatch.setattr(ix, "EXACT_MAX_N", 100)
    monkeypatch.setattr(ix, "HNSW_MAX_N", 100)                      # 3000 rows: IVF
    kept = RetrievalIndex.build(gallery, target_recall=0.9)
    assert kept.kind == "ivf" and kept.spec.nprobe < kept.spec.nlist and not kept.spec.note
    fell = RetrievalIndex.build(gallery, target_recall=1.01)        # unreachable: every list gets scanned
    assert fell.kind == "exact" and "exhaustive" in fell.spec.note
    explicit = RetrievalIndex.build(gallery, spec=kept.spec, target_recall=1.01)  # an explicit spec is kept
    assert explicit.kind == "ivf" and explicit.spec.nprobe == explicit.spec.nlist


def test_exact_over_a_memmap_equals_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(ix, "GALLERY_BLOCK", 700)                   # several gallery blocks, one partial
    monkeypatch.setattr(ix, "QUERY_BLOCK", 16)
    raw = np.random.default_rng(1).normal(size=(3000, DIM)).astype(np.float32) * 3  # not normalised
    np.save(tmp_path / "g.npy", raw)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    q = np.random.default_rng(2).normal(size=(40, DIM)).astype(np.float32)
    s_mem, i_mem = RetrievalIndex(raw).search(q, 10)
    s_map, i_map = RetrievalIndex(mapped).search(q, 10)
    np.testing.assert_array_equal(i_map, i_mem)
    np.testing.assert_allclose(s_map, s_mem, rtol=1e-6)
    np.testing.assert_array_equal(i_mem, brute_force(raw, q, 10))
    assert np.all(np.diff(s_mem, axis=1) <= 0)


def test_approximate_kinds_reach_high_recall(gallery, built):
    q = clustered(3300, seed=0)[3000:]  # same centres (drawn first), not gallery members
    truth = brute_force(gallery, q, 10)
    for kind in ("ivf", "hnsw"):
        index = built[kind]
        assert index.kind == kind and index.spec.recall_at_10 >= 0.95
        assert recall_at_k(index.search(q, 10)[1], truth) >= 0.9, kind


def test_batched_equals_one_by_one(gallery, built):
    q = clustered(3020, seed=0)[3000:]
    for kind, index in built.items():
        s_batch, i_batch = index.search(q, 10)
        singles = [index.search(row, 10) for row in q]
        np.testing.assert_array_equal(i_batch, np.concatenate([i for _, i in singles]), err_msg=kind)
        np.testing.assert_allclose(s_batch, np.concatenate([s for s, _ in singles]), rtol=1e-5, atol=1e-6)


def test_exclude_drops_the_query_itself(gallery, built):
    rows = np.arange(0, 3000, 150)
    for kind, index in built.items():
        _, plain = index.search(gallery[rows], 11)
        scores, left = index.search(gallery[rows], 10, exclude=rows)
        assert left.shape == (len(rows), 10) and not (left == rows[:, None]).any(), kind
        assert np.all(np.diff(scores, axis=1) <= 1e-6), kind
        for p, got, r in zip(plain, left, rows):  # the rest keeps its order
            np.testing.assert_array_equal(got, p[p != r][:10])
    tiny = gallery[:5]                                               # fewer rows than k: the 4 others
    _, others = RetrievalIndex(tiny).search(tiny, 10, exclude=np.arange(5))
    assert others.shape == (5, 4) and all(set(row) == set(range(5)) - {i} for i, row in enumerate(others))


@pytest.mark.parametrize("kind,storage", [("exact", "fp32"), ("exact", "fp16"), ("ivf", "sq8"), ("hnsw", "fp32"),
                                          ("ivf", "pq")])
def test_save_load_round_trip(tmp_path, gallery, kind, storage):
    built = RetrievalIndex.build(gallery, spec=make_spec(kind, storage, 0, DIM), target_recall=None)
    built.set_search_params(nprobe=5 if kind == "ivf" else None, ef_search=48 if kind == "hnsw" else None)
    built.save(tmp_path)
    record = json.loads((tmp_path / "index.json").read_text())
    assert {"kind", "storage", "nlist", "nprobe", "M", "ef_search", "build_seconds", "n", "dim"} <= set(record)
    loaded = RetrievalIndex.load(tmp_path)
    assert loaded.spec == built.spec and loaded.kind == kind
    assert (loaded.spec.nprobe, loaded.spec.ef_search) == {"ivf": (5, 0), "hnsw": (0, 48)}.get(kind, (0, 0))
    assert isinstance(loaded.vectors, np.memmap)
    assert loaded.vectors.dtype == (np.float32 if storage == "fp32" else np.float16)
    q = clustered(3030, seed=0)[3000:]
    s_built, i_built = built.search(q, 10)
    s_loaded, i_loaded = loaded.search(q, 10)
    if storage == "fp32":
        np.testing.assert_array_equal(i_loaded, i_built)
        np.testing.assert_allclose(s_loaded, s_built, rtol=1e-5, atol=1e-6)
    else:  # vectors.npy holds float16: scores move by ~1e-4 and near-ties may swap
        np.testing.assert_allclose(s_loaded, s_built, atol=2e-3)
        assert recall_at_k(i_loaded, i_built) >= 0.9


def test_load_rejects_a_mismatched_folder(tmp_path, gallery):
    RetrievalIndex(gallery).save(tmp_path)
    np.save(tmp_path / "vectors.npy", gallery[:10])
    with pytest.raises(ValueError, match="index.json says"):
        RetrievalIndex.load(tmp_path)


def test_one_exact_backend_and_query_width_checked(gallery):
    with pytest.raises(ValueError, match="one backend"):
        RetrievalIndex(gallery, backend="faiss")
    with pytest.raises(ValueError, match="width"):
        RetrievalIndex(gallery).search(np.ones(DIM + 1, np.float32), 3)


def test_exact_search_on_a_torch_device_matches_the_host_path(tmp_path, gallery):
    """The GPU path (run here on torch's CPU device): fp32 gives the host's ranking; fp16 storage, re-scored in
    float32, keeps nearly all of it and float32-accurate scores; save/load and leave-one-out behave alike."""
    queries = clustered(200, seed=5)
    host_s, host_i = RetrievalIndex(gallery).search(queries, 10)
    on_fp32 = RetrievalIndex.build(gallery, spec=make_spec("exact", "fp32", 0, DIM), device="cpu")
    s, i = on_fp32.search(queries, 10)
    np.testing.assert_array_equal(i, host_i)
    np.testing.assert_allclose(s, host_s, atol=1e-5)
    on_fp16 = RetrievalIndex.build(gallery, spec=make_spec("exact", "fp16", 0, DIM), device="cpu")
    s, i = on_fp16.search(queries, 10)
    assert recall_at_k(i, host_i) >= 0.98
    np.testing.assert_allclose(s[:, 0], host_s[:, 0], atol=2e-3)  # fp16 rows, float32 arithmetic
    rows = np.arange(50)
    _, loo = on_fp16.search(gallery[rows], 5, exclude=rows)
    assert not (loo == rows[:, None]).any() and loo.shape == (50, 5)
    loaded = RetrievalIndex.load(on_fp16.save(tmp_path / "ix"), device="cpu")
    assert loaded.spec.device == "cpu" and loaded.spec.storage == "fp16"
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], i)
    np.testing.assert_array_equal(RetrievalIndex.load(tmp_path / "ix").search(queries, 10)[1], i)  # host reads it


def test_a_gpu_prefers_exact_search_within_its_memory():
    assert choose_spec(1_000_000, 1280, 3 * 2**30).kind == "hnsw"  # host: exact is ~170 ms a query at 1M
    on_gpu = choose_spec(1_000_000, 1280, 3 * 2**30, device="cuda")
    assert (on_gpu.kind, on_gpu.storage, on_gpu.device) == ("exact", "fp16", "cuda")
    assert choose_spec(10_000_000, 1280, 30 * 2**30, device="cuda").storage == "fp16"
    assert choose_spec(10_000_000, 1280, 10 * 2**30, device="cuda").kind == "ivf"  # fp16 needs 25.6 GB
    with pytest.raises(ValueError, match="only exact search"):
        make_spec("hnsw", "fp16", 10, DIM, device="cuda")


def test_a_device_index_that_does_not_fit_the_budget_stays_on_the_host(gallery):
    """The automatic choice on a device whose budget holds no exact copy is an approximate index on the host;
    an explicit approximate spec on a device is refused."""
    small = RetrievalIndex.build(gallery, memory_budget=gallery.nbytes // 4, device="cpu")  # fp16 needs half
    assert small.kind != "exact" and small.spec.device == "" and small._on_device is None
    with pytest.raises(ValueError, match="only exact search"):
        RetrievalIndex.build(gallery, spec=make_spec("ivf", "sq8", 0, DIM), device="cpu")


def test_batched_search_of_an_unaligned_gallery_stages_blocks_and_still_matches(monkeypatch):
    """A gallery mapped at an odd byte (an npz written before members were aligned) is searched in batches through
    an aligned buffer, block by block (numpy skips BLAS on unaligned data); results equal the aligned search, for
    batches below and above the threshold, with a short last block."""
    g = clustered(2500, seed=3)
    raw = np.zeros(g.nbytes + 1, np.uint8)
    mapped = np.ndarray(g.shape, np.float32, buffer=raw, offset=1)
    mapped[:] = g
    assert not mapped.flags.aligned
    monkeypatch.setattr(ix, "GALLERY_BLOCK", 1000)  # three blocks, the last one short
    queries = clustered(40, seed=4)
    for batch in (queries[:ix.STAGE_MIN_QUERIES - 1], queries):
        s_map, i_map = RetrievalIndex(mapped).search(batch, 7)
        s_mem, i_mem = RetrievalIndex(g).search(batch, 7)
        np.testing.assert_array_equal(i_map, i_mem)
        np.testing.assert_allclose(s_map, s_mem, rtol=1e-6)


def test_an_index_stored_beside_a_gallery_is_used_only_for_that_gallery_file(tmp_path, gallery):
    """frpt embed --index: the choice is saved beside the gallery file; stored_index gives it back (same results as
    when built) for that file only: not after the gallery is rewritten, nor when the build was interrupted."""
    import os

    from frpt.evaluation import Embeddings
    from frpt.gallery import Gallery, index_dir, store_index, stored_index

    path = tmp_path / "folder-test-abc.npz"
    path.write_bytes(b"the gallery file")
    g = Gallery(Embeddings(gallery, gallery, np.zeros(len(gallery), np.int64)), [f"{i}" for i in range(len(gallery))],
                ["c"], path)
    built = store_index(g, spec=make_spec("hnsw", "fp32", 0, DIM))
    assert index_dir(path) == tmp_path / "folder-test-abc.index" and (index_dir(path) / "index.json").is_file()
    queries = clustered(50, seed=9)
    again = stored_index(g)
    assert again.kind == "hnsw" and again.spec.ef_search == built.spec.ef_search
    assert stored_index(g, device="cpu").spec.device == ""  # approximate indexes stay with faiss on the host
    np.testing.assert_array_equal(again.search(queries, 5)[1], built.search(queries, 5)[1])
    assert recall_at_k(again.search(queries, 5)[1], brute_force(gallery, queries, 5)) >= 0.85  # approximate

    path.write_bytes(b"the gallery file, embedded again")  # frpt embed --recompute
    os.utime(path, ns=(1, 1))
    assert stored_index(g) is None
    store_index(g, spec=make_spec("exact", "fp16", 0, DIM))
    assert stored_index(g).kind == "exact"
    (index_dir(path) / "gallery.json").unlink()  # as a build killed before its last write leaves it
    assert stored_index(g) is None
