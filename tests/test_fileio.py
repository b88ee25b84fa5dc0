"""Large galleries without copies: fileio.npz_memmap maps np.savez members in place; index.cosine_scores ranks a mapped gallery a block at a time."""
from __future__ import annotations

import numpy as np
import pytest

from frpt.fileio import npz_memmap
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
