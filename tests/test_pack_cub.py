"""bench/pack_cub.py: CUB as WebP chunks for a machine that takes 64 MiB a call, and back into a tree the loader
reads with the same splits, labels, boxes and image sizes."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from frpt.data import build_dataset

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO / "bench"))
import pack_cub  # noqa: E402 - importable by name, so its process pool can pickle the encoder


def test_packed_chunks_unpack_to_the_same_dataset(tmp_path, fake_cub):
    original = fake_cub(tmp_path / "CUB_200_2011", n_classes=4, per_class=3)
    chunks = pack_cub.pack(original, tmp_path / "chunks", [0.0001, 0.0001, 1.0], quality=65, workers=2)
    assert len(chunks) == 3  # a 105-byte limit holds one small WebP: all three chunks are used
    pack_cub.unpack(tmp_path / "copy", chunks)
    for split in ("train", "test"):
        a = build_dataset("cub", split, root=original)
        b = build_dataset("cub", split, root=tmp_path / "copy")
        assert b.classes == a.classes and b.targets == a.targets and len(b) == len(a) == 6
        for i in range(len(a)):
            assert b.box(i) == a.box(i)
            im_a, im_b = a.load_image(i), b.load_image(i)
            assert Path(b.samples[i][0]).suffix == ".webp" and im_b.size == im_a.size
            assert np.abs(np.asarray(im_a, np.int16) - np.asarray(im_b, np.int16)).mean() < 4
