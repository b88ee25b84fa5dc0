from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CUB_ROOT = Path(os.environ.get("FRPT_CUB_ROOT", REPO.parent / "shared" / "data" / "CUB_200_2011"))

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("FRPT_WARM_UMAP", "0")  # the app's background numba warm-up would only compete with tests
# Gallery and sweep jobs (frpt.jobs) are queued, not run: a CUB page must not start minutes of embedding behind
# the tests; tests/test_jobs.py runs them on purpose.
os.environ.setdefault("FRPT_BACKGROUND_JOBS", "0")


@pytest.fixture(autouse=True)
def torch_threads():
    """Each test starts with the suite's torch thread count and leaves it so: a CLI main() called in-process with
    --threads 1 would otherwise run every later test on one thread (another float summation order, which turned the
    short published-DPP training of test_training.py from falling to rising loss)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def compiled_model_cache(tmp_path_factory) -> Path:
    """Compiled backbones (frpt/engine.py) go to a folder of this test session, never the user's ~/.cache/frpt:
    every run converts from scratch, as a fresh CI machine does."""
    folder = tmp_path_factory.mktemp("frpt-cache")
    previous = os.environ.get("FRPT_CACHE_DIR")
    os.environ["FRPT_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("FRPT_CACHE_DIR", None)
    else:
        os.environ["FRPT_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def cub_root() -> Path:
    if not (CUB_ROOT / "images.txt").is_file():
        pytest.skip(f"CUB-200-2011 not found at {CUB_ROOT} (set FRPT_CUB_ROOT)")
    return CUB_ROOT


@pytest.fixture
def fake_cub() -> Callable[..., Path]:
    """Factory for a tiny CUB_200_2011 tree at ``base``: ``n_classes`` folders of ``per_class`` 40x30 JPEGs with
    images.txt, classes.txt, image_class_labels.txt and bounding_boxes.txt; the first ``missing`` images are
    listed but not written. Returns ``base``."""
    def make(base: Path, n_classes: int = 4, per_class: int = 3, missing: int = 0) -> Path:
        (base / "images").mkdir(parents=True)
        classes, images, labels, boxes = [], [], [], []
        k = 0
        for c in range(1, n_classes + 1):
            folder = f"{c:03d}.Bird_{c}"
            classes.append(f"{c} {folder}")
            for j in range(per_class):
                k += 1
                rel = f"{folder}/img_{j}.jpg"
                images.append(f"{k} {rel}")
                labels.append(f"{k} {c}")
                boxes.append(f"{k} 1.0 2.0 10.0 12.0")
                if k > missing:
                    (base / "images" / folder).mkdir(exist_ok=True)
                    Image.new("RGB", (40, 30), (120, 60, 30)).save(base / "images" / rel, "JPEG")
        for name, lines in (("classes.txt", classes), ("images.txt", images),
                            ("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes)):
            (base / name).write_text("\n".join(lines) + "\n")
        return base

    return make
