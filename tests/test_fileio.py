"""Large galleries without copies: fileio.npz_memmap maps np.savez members in place; index.cosine_scores ranks a mapped gallery a block at a time."""
from __future__ import annotations

import numpy as np
import pytest

from frpt.fileio import npz_memmap, write_npz_blocks
from frpt.index import cosine_scores, row_norms
from frpt.ui.logic import rank_gallery


def test_npz_members_map_to_the_arrays_np_load_reads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"after": rng.normal(size=(37, 5)).astype(np.float32), "labels": np.arange(37),
              "half": rng.normal(size=(4, 3)).astype(np.float16), "fortran": np.asfortranarray(rng.normal(size=(6, 4))),
              "ids": np.array(["a/b.jpg", "c.jpg"])}
    path = tmp_path / "g.npz"
    np.savez(path, **arrays)
    mapped = npz_memmap(path, ("after", "labels", "half", "fortran", "ids"))
    for name, array in arrays.items():
        assert isinstance(mapped[name], np.memmap) and mapped[name].dtype == array.dtype
        np.testing.assert_array_equal(mapped[name], array)
    with pytest.raises(KeyError):
        npz_memmap(path, ("absent",))
    np.savez_compressed(tmp_path / "c.npz", after=arrays["after"])
    with pytest.raises(ValueError, match="compressed"):
        npz_memmap(tmp_path / "c.npz", ("after",))


def test_an_archive_written_block_by_block_reads_as_the_concatenation(tmp_path):
    rng = np.random.default_rng(1)
    blocks = [rng.normal(size=(n, 6)).astype(np.float16) for n in (5, 0, 3, 8)]
    members = {"after": blocks, "labels": [np.arange(5), np.arange(7, 10)], "ids": [np.array(["a.jpg", "bb/c.png"])],
               "precision": [np.array("bf16")]}
    path = tmp_path / "g.npz"
    with open(path, "wb") as fh:
        write_npz_blocks(fh, members)
    with np.load(path) as data:
        np.testing.assert_array_equal(data["after"], np.concatenate(blocks))
        np.testing.assert_array_equal(data["labels"], [0, 1, 2, 3, 4, 7, 8, 9])
        assert data["ids"].tolist() == ["a.jpg", "bb/c.png"] and str(data["precision"]) == "bf16"
    mapped = npz_memmap(path, ("after", "labels"))
    np.testing.assert_array_equal(mapped["after"], np.concatenate(blocks))
    with open(tmp_path / "bad.npz", "wb") as fh, pytest.raises(ValueError, match="block of shape"):
        write_npz_blocks(fh, {"after": [np.zeros((2, 6)), np.zeros((2, 5))]})


def test_blocked_cosine_scores_rank_like_the_whole_matrix(tmp_path):
    rng = np.random.default_rng(1)
    gallery, query = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    gallery[3] = 0  # a zero row scores 0, not NaN
    whole = (gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)) @ (query / np.linalg.norm(query))
    np.save(tmp_path / "g.npy", gallery)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    for block in (7, 50, 65_536):
        np.testing.assert_allclose(cosine_scores(query, mapped, block=block), whole, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cosine_scores(query, mapped, row_norms(mapped), block=block), whole, rtol=1e-5,
                                   atol=1e-6)
    labels = rng.integers(0, 4, 50)
    ranking = rank_gallery(query, mapped, labels, 5, int(labels[0]))
    np.testing.assert_array_equal(ranking.indices, np.argsort(-whole, kind="stable")[:5])


def test_npz_members_are_written_aligned_for_mapping(tmp_path):
    """Every member's array data starts on a 64-byte boundary whatever precedes it (np.savez leaves it at any byte,
    and numpy then computes on the mapped array without BLAS); np.load still reads the archive."""
    ids, b = np.arange(3, dtype=np.uint8), np.random.default_rng(0).random((7, 5)).astype(np.float32)
    path = tmp_path / "g.npz"
    with open(path, "wb") as fh:
        write_npz_blocks(fh, {"ids": [ids], "after": [b[:3], b[3:]], "precision": [np.array("fp32")], "before": [b]})
    mapped = npz_memmap(path, ("after", "before"))
    assert all(m.offset % 64 == 0 and m.flags.aligned for m in mapped.values())
    np.testing.assert_array_equal(mapped["after"], b)
    with np.load(path) as z:
        np.testing.assert_array_equal(z["ids"], ids)
        np.testing.assert_array_equal(z["before"], b)
        assert str(z["precision"]) == "fp32"
