"""Datasets (CUB, fake Cars/Aircraft/folder layouts, synthetic) and transforms."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frpt.data import (
    DATASETS,
    SyntheticDataset,
    build_dataset,
    build_transform,
    resize_size,
    transform_box,
)
from frpt.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
CUB_ROOT = Path(os.environ.get("FRPT_CUB_ROOT") or REPO.parent / "shared/data/CUB_200_2011")


def _jpeg(path: Path, size=(40, 30), colour=(120, 60, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG")


def _one_sentence(msg: str) -> None:
    assert "\n" not in msg and msg.endswith("."), msg
    msg.encode("utf-8")


# ---------------------------------------------------------------- registry

def test_registry_and_errors():
    assert set(DATASETS) == {"cub", "cars", "aircraft", "folder", "synthetic"}
    with pytest.raises(DatasetError) as err:
        build_dataset("imagenet", "train")
    assert all(n in str(err.value) for n in DATASETS)
    _one_sentence(str(err.value))
    for name in ("cub", "cars", "aircraft", "folder"):
        with pytest.raises(DatasetError, match="--root"):
            build_dataset(name, "train")
    with pytest.raises(DatasetError, match="split"):
        build_dataset("synthetic", "val")
    with pytest.raises(DatasetError, match="option 'colour'"):
        build_dataset("synthetic", "train", colour=1)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("cub", "train", root="/definitely/not/here")


# ---------------------------------------------------------------- CUB (real copy)

@pytest.mark.skipif(not (CUB_ROOT / "images.txt").is_file(),
                    reason=f"CUB-200-2011 not found at {CUB_ROOT} (set FRPT_CUB_ROOT to run)")
def test_cub_real_splits():
    t0 = time.perf_counter()
    train = build_dataset("cub", "train", root=CUB_ROOT)
    test = build_dataset("cub", "test", root=str(CUB_ROOT.parent))  # parent folder is accepted too
    elapsed = time.perf_counter() - t0
    assert elapsed < 4.0, f"constructing both CUB splits took {elapsed:.1f} s"
    assert (len(train), len(train.classes), len(set(train.targets))) == (5864, 100, 100)
    assert (len(test), len(test.classes), len(set(test.targets))) == (5924, 100, 100)
    assert not set(train.classes) & set(test.classes)
    assert train.classes[0].startswith("001.") and test.classes[0].startswith("101.")
    assert sorted(set(test.targets)) == list(range(100))
    # label -> class folder is consistent with the path
    for ds in (train, test):
        for i in (0, len(ds) // 2, len(ds) - 1):
            path, label = ds.samples[i]
            assert Path(path).parent.name == ds.classes[label]
    # boxes live in load_image pixels
    for i in (0, 1234, len(test) - 1):
        im = test.load_image(i)
        x, y, w, h = test.box(i)
        assert im.mode == "RGB" and min(im.size) == 224
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= im.width + 1 and y + h <= im.height + 1
    tensor, label, idx = build_dataset("cub", "train", root=CUB_ROOT,
                                       transform=build_transform(64, train=False))[7]
    assert tensor.shape == (3, 64, 64) and label == 0 and idx == 7


def test_fake_cub_split_and_missing(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "ok" / "CUB_200_2011")
    tr, te = build_dataset("cub", "train", root=base), build_dataset("cub", "test", root=tmp_path / "ok")
    assert (len(tr), len(te)) == (6, 6) and tr.targets == [0, 0, 0, 1, 1, 1] and te.targets == tr.targets
    assert te.classes == ["003.Bird_3", "004.Bird_4"] and tr.box(4) == (1.0, 2.0, 10.0, 12.0)

    bad = fake_cub(tmp_path / "bad" / "CUB_200_2011", missing=3)  # first class's 3 images absent
    with pytest.raises(DatasetError) as err:
        build_dataset("cub", "train", root=bad)
    msg = str(err.value)
    _one_sentence(msg)
    assert "001.Bird_1/img_0.jpg" in msg and "and 2 more" in msg
    build_dataset("cub", "test", root=bad)  # test split is complete

    (base / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match="image_class_labels.txt"):
        build_dataset("cub", "train", root=base)
    (base / "images.txt").unlink()
    with pytest.raises(DatasetError, match="images.txt"):
        build_dataset("cub", "train", root=base)


def test_fake_cub_malformed_line(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    lines[4] = "5 notanumber"
    (base / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 5 of .*image_class_labels.txt"):
        build_dataset("cub", "train", root=base)


# ---------------------------------------------------------------- Cars

def _fake_cars(root: Path, n_classes: int = 8, per_class: int = 2, missing: int = 0) -> Path:
    import scipy.io

    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "relative_im_path", "test")]
    rows, k = [], 0
    for c in range(1, n_classes + 1):
        for j in range(per_class):
            k += 1
            rel = f"car_ims/{k:06d}.jpg"
            if k > missing:
                _jpeg(root / rel, size=(50, 40))
            rows.append((np.array([[5]]), np.array([[6]]), np.array([[30]]), np.array([[25]]),
                         np.array([[c]], dtype=np.uint8), np.array([rel]), np.array([[j % 2]])))
    annos = np.array([rows], dtype=dtype)
    names = np.empty((1, n_classes), dtype=object)
    for c in range(n_classes):
        names[0, c] = np.array([f"Make Model {2000 + c}"])
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annos, "class_names": names})
    return root


def test_fake_cars(tmp_path):
    root = _fake_cars(tmp_path)
    tr, te = build_dataset("cars", "train", root=root), build_dataset("cars", "test", root=root)
    assert (len(tr), len(te)) == (8, 8)
    assert tr.targets == [0, 0, 1, 1, 2, 2, 3, 3] and te.targets == tr.targets
    assert tr.classes == [f"Make Model {2000 + c}" for c in range(4)]
    assert te.classes == [f"Make Model {2000 + c}" for c in range(4, 8)]
    assert te.samples[0][0].endswith("car_ims/000009.jpg")  # test flag ignored: class decides
    assert tr.box(0) == (4.0, 5.0, 26.0, 20.0)
    assert tr.load_image(3).size == (50, 40)


def test_fake_cars_missing(tmp_path):
    root = _fake_cars(tmp_path, missing=5)
    with pytest.raises(DatasetError) as err:
        build_dataset("cars", "train", root=root)
    assert "car_ims/000001.jpg" in str(err.value) and "and 4 more" in str(err.value)
    (root / "cars_annos.mat").unlink()
    with pytest.raises(DatasetError, match="cars_annos.mat"):
        build_dataset("cars", "test", root=root)


# ---------------------------------------------------------------- Aircraft

VARIANTS = ["707-320", "A320", "Cessna 172", "F/A-18", "DHC-8-100", "Spitfire"]


def _fake_aircraft(root: Path, missing: int = 0) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    boxes, k = [], 0
    for v in VARIANTS:
        for part in ("train", "val", "test"):
            k += 1
            image_id = f"{1000000 + k:07d}"
            lists[part].append(f"{image_id} {v}")
            boxes.append(f"{image_id} 3 4 40 30")
            if k > missing:
                im = Image.new("RGB", (60, 80), (200, 200, 200))
                im.paste((0, 0, 0), (0, 60, 60, 80))  # the 20-px banner
                im.save(data / "images" / f"{image_id}.jpg")
    for part, lines in lists.items():
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    (data / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root


def test_fake_aircraft(tmp_path):
    root = _fake_aircraft(tmp_path)
    for r in (root / "fgvc-aircraft-2013b", root / "fgvc-aircraft-2013b" / "data"):
        tr, te = build_dataset("aircraft", "train", root=r), build_dataset("aircraft", "test", root=r)
        assert tr.classes == VARIANTS[:3] and te.classes == VARIANTS[3:]
        assert (len(tr), len(te)) == (9, 9)
        assert sorted(tr.targets) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert te.classes[0] == "F/A-18"
    im = te.load_image(0)
    assert im.size == (60, 60)  # copyright banner cropped
    assert np.asarray(im)[-1].mean() > 150  # no black banner rows left
    assert te.box(0) == (2.0, 3.0, 38.0, 27.0)


def test_fake_aircraft_missing(tmp_path):
    root = _fake_aircraft(tmp_path, missing=2)
    with pytest.raises(DatasetError) as err:
        build_dataset("aircraft", "train", root=root / "fgvc-aircraft-2013b")
    assert "1000001.jpg" in str(err.value) and "and 1 more" in str(err.value)
    (root / "fgvc-aircraft-2013b/data/images_variant_val.txt").unlink()
    with pytest.raises(DatasetError, match="images_variant_val.txt"):
        build_dataset("aircraft", "test", root=root / "fgvc-aircraft-2013b")


# ---------------------------------------------------------------- folder

def test_folder_layout(tmp_path):
    for c, n in (("ant", 2), ("bee", 3), ("cat", 1), ("dog", 2)):
        for j in range(n):
            _jpeg(tmp_path / c / f"{j}.JPG" if j == 0 else tmp_path / c / f"{j}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    # a non-UTF-8 filename inside a test class
    raw = os.path.join(os.fsencode(tmp_path / "dog"), b"h\xf6und.jpg")
    Image.new("RGB", (9, 9), (1, 2, 3)).save(os.fsdecode(raw), "JPEG")
    tr, te = build_dataset("folder", "train", root=tmp_path), build_dataset("folder", "test", root=tmp_path)
    assert tr.classes == ["ant", "bee"] and te.classes == ["cat", "dog"]
    assert tr.targets == [0, 0, 1, 1, 1] and te.targets == [0, 1, 1, 1]  # .txt ignored, .JPG kept
    weird = [i for i, (p, _) in enumerate(te.samples) if os.fsencode(p).endswith(b"h\xf6und.jpg")]
    assert len(weird) == 1 and te.load_image(weird[0]).size == (9, 9)
    str(te).encode("utf-8")

    split = tmp_path.parent / f"{tmp_path.name}_split.txt"
    split.write_text("# custom\nant test\nbee train\ncat train\ndog test\n")
    tr2 = build_dataset("folder", "train", root=tmp_path, split_file=split)
    te2 = build_dataset("folder", "test", root=tmp_path, split_file=split)
    assert tr2.classes == ["bee", "cat"] and te2.classes == ["ant", "dog"] and len(tr2) == 4

    split.write_text("ant test\nzebra train\n")
    with pytest.raises(DatasetError, match="zebra"):
        build_dataset("folder", "train", root=tmp_path, split_file=split)


def test_folder_empty_classes_and_bad_names(tmp_path):
    for c in ("a", "b", "c"):
        _jpeg(tmp_path / c / "x.jpg")
    for c in ("d", "e"):
        (tmp_path / c).mkdir()
    (tmp_path / os.fsdecode(b"f\xff")).mkdir()
    assert len(build_dataset("folder", "train", root=tmp_path)) == 3  # a, b, c
    with pytest.raises(DatasetError) as err:
        build_dataset("folder", "test", root=tmp_path)  # d, e, f\xff all empty
    msg = str(err.value)
    _one_sentence(msg)
    assert os.path.join(str(tmp_path), "d") in msg and "and 2 more" in msg and "no images" in msg
    with pytest.raises(DatasetError, match="at least 2"):
        build_dataset("folder", "train", root=tmp_path / "a")


# ---------------------------------------------------------------- synthetic

def _digest(im: Image.Image) -> str:
    return hashlib.sha256(im.tobytes()).hexdigest()


def test_synthetic_deterministic_and_sized():
    a, b = SyntheticDataset("test"), build_dataset("synthetic", "test")
    assert len(a) == 240 and len(a.classes) == 10 and a.samples[42][0] == "synthetic/test/00042"
    for i in (0, 42, 239):
        assert _digest(a.load_image(i)) == _digest(a.load_image(i)) == _digest(b.load_image(i))
        assert a.box(i) == b.box(i)
    assert _digest(a.load_image(0)) != _digest(SyntheticDataset("test", seed=1).load_image(0))
    s = SyntheticDataset("train", num_classes=6, images_per_class=5, image_size=96)
    assert len(s) == 15 and s.load_image(0).size == (96, 96) and s.targets == sorted(s.targets)
    t0 = time.perf_counter()
    for i in range(100):
        a.load_image(i)
    per_image = (time.perf_counter() - t0) / 100
    assert per_image < 0.005, f"{per_image * 1000:.1f} ms per image"
    x, label, idx = build_dataset("synthetic", "train", transform=build_transform(64, train=False))[30]
    assert x.shape == (3, 64, 64) and label == 1 and idx == 30
    with pytest.raises(DatasetError):
        SyntheticDataset("train", num_classes=1000)


def test_synthetic_same_across_processes():
    code = ("import hashlib; from frpt.data.synthetic import SyntheticDataset as S; "
            "print(hashlib.sha256(S('train', seed=3).load_image(17).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == _digest(SyntheticDataset("train", seed=3).load_image(17))


def test_synthetic_boxes_and_zero_shot_classes():
    tr, te = SyntheticDataset("train"), SyntheticDataset("test")
    assert not set(tr.attributes) & set(te.attributes)
    assert not set(tr.classes) & set(te.classes)
    for ds in (tr, te):
        for i in range(0, len(ds), 7):
            x, y, w, h = ds.box(i)
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert 0.06 * 128 <= w <= 0.2 * 128 and 0.06 * 128 <= h <= 0.2 * 128


def _recall_at_1(feats: np.ndarray, labels: np.ndarray) -> float:
    f = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-9)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(1)] == labels).mean())


def test_synthetic_part_carries_the_class_not_the_global_image():
    ds = SyntheticDataset("test")
    labels = np.array(ds.targets)
    glob, part = [], []
    for i in range(len(ds)):
        im = ds.load_image(i)
        x, y, w, h = ds.box(i)
        glob.append(np.asarray(im.resize((8, 8), Image.Resampling.BILINEAR), np.float32).ravel())
        crop = np.asarray(im.crop((x, y, x + w, y + h)).resize((12, 12), Image.Resampling.NEAREST)) // 64
        part.append(np.bincount((crop[..., 0] * 16 + crop[..., 1] * 4 + crop[..., 2]).ravel(), minlength=64))
    glob_a = np.array(glob)
    r_glob = _recall_at_1(glob_a - glob_a.mean(0), labels)
    r_part = _recall_at_1(np.array(part, np.float32), labels)
    assert r_glob < 0.25, f"global pixels retrieve the class too well (R@1={r_glob:.2f})"
    assert r_part > 0.55 and r_part > r_glob + 0.35, (r_part, r_glob)
    # two images of one class differ globally (pose, position, background)
    a, b = (np.asarray(ds.load_image(i), np.float32) for i in (0, 1))
    assert np.abs(a - b).mean() > 20 and ds.box(0)[:2] != ds.box(1)[:2]


# ---------------------------------------------------------------- transforms

def _photo(w: int = 300, h: int = 200) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("s", [224, 64])
def test_test_transform(s):
    tf = build_transform(s, train=False)
    x = tf(_photo())
    assert x.dtype == torch.float32 and x.shape == (3, s, s)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5  # not normalised
    assert torch.equal(x, tf(_photo()))
    assert torch.equal(x, build_transform(s, train=False, recipe="official")(_photo()))
    assert resize_size(224) == 256 and resize_size(448) == 512
    # What a page shows (frpt.ui.cache.thumbnail, PIL only) is the model's input to the pixel, at a quarter the cost
    from frpt.data.transforms import test_geometry
    from frpt.viz import to_uint8

    shown = np.asarray(test_geometry(s)(_photo()))
    assert shown.shape == (s, s, 3) and np.array_equal(shown, to_uint8(x))


@pytest.mark.parametrize("recipe", ["paper", "official"])
def test_train_transform(recipe):
    torch.manual_seed(0)
    tf = build_transform(96, train=True, recipe=recipe)
    outs = [tf(_photo()) for _ in range(4)]
    for x in outs:
        assert x.shape == (3, 96, 96) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # random
    with pytest.raises(ConfigError):
        build_transform(96, train=True, recipe="fancy")
    with pytest.raises(ConfigError):
        build_transform(0, train=False)


def test_transform_box_known_mapping():
    # 448x224 image -> 256x256 resize (sx = 4/7, sy = 8/7) -> centre crop 224 (offset 16).
    assert transform_box((224, 112, 56, 28), (448, 224), 224) == pytest.approx((112, 112, 32, 32))
    assert transform_box((0, 0, 448, 224), (448, 224), 224) == pytest.approx((0, 0, 224, 224))
    assert transform_box((0, 0, 10, 10), (448, 224), 224)[2:] == (0.0, 0.0)  # outside the crop


def test_transform_box_matches_pixels():
    im = Image.new("RGB", (300, 200), (0, 0, 0))
    box = (120, 50, 90, 60)
    im.paste((255, 255, 255), (box[0], box[1], box[0] + box[2], box[1] + box[3]))
    x = build_transform(112, train=False)(im)[0].numpy()
    ys, xs = np.nonzero(x > 0.5)
    got = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    assert np.allclose(got, transform_box(box, im.size, 112), atol=1.5), (got, transform_box(box, im.size, 112))
