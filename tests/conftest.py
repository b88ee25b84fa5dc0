from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CUB_ROOT = Path(os.environ.get("FRPT_CUB_ROOT", REPO.parent / "shared" / "data" / "CUB_200_2011"))

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("FRPT_WARM_UMAP", "0")  # the app's background numba warm-up would only compete with tests


@pytest.fixture(scope="session")
def cub_root() -> Path:
    if not (CUB_ROOT / "images.txt").is_file():
        pytest.skip(f"CUB-200-2011 not found at {CUB_ROOT} (set FRPT_CUB_ROOT)")
    return CUB_ROOT
