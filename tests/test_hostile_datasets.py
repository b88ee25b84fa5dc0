"""Hostile dataset roots: missing metadata, images listed but absent, empty classes, unreadable files and folders,
non-UTF-8 names, garbled metadata. Each must raise one DatasetError/ImageError sentence that names the first
offending path (and counts the rest) - never KeyError, IndexError or a traceback.
"""
from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frpt.data import build_dataset
from frpt.errors import DatasetError, FRPTError, ImageError

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def jpeg(path: Path, size=(24, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path, "JPEG")


def sentence(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and msg.endswith("."), repr(msg)
    msg.encode("utf-8")  # printable: undecodable bytes were replaced
    return msg


def refused(name, split, root, match="", exc=DatasetError, **kw) -> str:
    with pytest.raises(exc) as err:
        build_dataset(name, split, root=root, **kw)
    msg = sentence(err.value)
    assert match in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- CUB metadata

@pytest.mark.parametrize("meta", ["images.txt", "classes.txt", "image_class_labels.txt"])
def test_cub_missing_metadata_file(tmp_path, meta, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    (base / meta).unlink()
    msg = refused("cub", "train", base)
    assert meta in msg


def test_cub_images_listed_but_absent_names_first_and_counts_rest(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    for j in range(3):
        (base / "images" / "001.Bird_1" / f"img_{j}.jpg").unlink()
    (base / "images" / "002.Bird_2" / "img_0.jpg").unlink()
    msg = refused("cub", "train", base, "img_0.jpg")
    assert str(base / "images" / "001.Bird_1" / "img_0.jpg") in msg and "(and 3 more)" in msg


def test_cub_empty_class(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    (base / "image_class_labels.txt").write_text("\n".join(l.replace(" 2", " 1") for l in lines) + "\n")
    refused("cub", "train", base, "002.Bird_2")


@pytest.mark.parametrize("meta, content", [
    ("images.txt", "1\n"), ("images.txt", "x 001.Bird_1/img_0.jpg\n"), ("classes.txt", "1 only\n"),
    ("image_class_labels.txt", "1 999\n2 1\n"), ("image_class_labels.txt", "1 one\n"),
    ("classes.txt", ""), ("images.txt", "\x00\x00\x00\n"), ("bounding_boxes.txt", "1 a b c d\n"),
    ("bounding_boxes.txt", "1 1 2\n"),
])
def test_cub_garbled_metadata(tmp_path, meta, content, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    (base / meta).write_text(content)
    refused("cub", "train", base)


def test_cub_non_utf8_metadata_and_names(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    with open(base / "images.txt", "ab") as fh:
        fh.write(b"13 001.Bird_1/v\xf6gel.jpg\n")
    with open(base / "image_class_labels.txt", "a") as fh:
        fh.write("13 1\n")
    msg = refused("cub", "train", base, "missing")  # shown with U+FFFD, still one printable sentence
    assert "\ufffd" in msg


def test_cub_unreadable_metadata(tmp_path, monkeypatch, fake_cub):
    """Tests run as root, so chmod 000 does not block reads: simulate EACCES at open() instead."""
    base = fake_cub(tmp_path / "CUB_200_2011")
    real_open = builtins.open

    def denied(path, *a, **kw):
        if str(path).endswith("image_class_labels.txt"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr("frpt.data.base.open", denied, raising=False)
    msg = refused("cub", "train", base, "cannot be read")
    assert "image_class_labels.txt" in msg and "permission" in msg.lower()


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 does not stop root from reading; "
                                    "test_cub_unreadable_metadata simulates the same EACCES instead")
def test_real_chmod_000(tmp_path, fake_cub):
    base = fake_cub(tmp_path / "CUB_200_2011")
    (base / "images.txt").chmod(0)
    try:
        refused("cub", "train", base, "cannot be read")
    finally:
        (base / "images.txt").chmod(0o644)


# ---------------------------------------------------------------------------------------------- folder datasets

def test_folder_root_problems(tmp_path):
    refused("folder", "train", tmp_path / "absent", "does not exist")
    (tmp_path / "file.jpg").write_bytes(b"x")
    refused("folder", "train", tmp_path / "file.jpg", "not a folder")
    (tmp_path / "empty").mkdir()
    refused("folder", "train", tmp_path / "empty", "at least 2")
    with pytest.raises(DatasetError, match="--root"):
        build_dataset("folder", "train", root="   ")


def test_folder_empty_classes_name_first_and_count(tmp_path):
    for c in ("a", "b"):
        jpeg(tmp_path / c / "x.jpg")
    for c in ("c", "d", "e"):
        (tmp_path / c).mkdir()
    (tmp_path / "d" / "notes.txt").write_text("no images here")
    msg = refused("folder", "test", tmp_path, "no images")
    assert str(tmp_path / "c") in msg and "(and 2 more)" in msg  # test split = c, d, e (5 classes, 2 train)


def test_folder_unlistable_class_folder(tmp_path, monkeypatch):
    """Simulated EACCES while listing (root ignores chmod): named, counted, never a crash."""
    for c in ("a", "b", "c", "d"):
        jpeg(tmp_path / c / "x.jpg")
    real_scandir = os.scandir

    def denied(path=".", *a, **kw):
        if os.fspath(path).endswith((os.sep + "c", os.sep + "d")):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *a, **kw)
    monkeypatch.setattr(os, "scandir", denied)
    msg = refused("folder", "test", tmp_path, "cannot be listed")
    assert str(tmp_path / "c") in msg and "(and 1 more)" in msg


def test_folder_non_utf8_names_and_unreadable_images(tmp_path, monkeypatch):
    raw_root = os.fsencode(tmp_path)
    for cls in (b"ant", b"bee", b"c\xe4t", b"d\xffg"):
        os.makedirs(os.path.join(raw_root, cls))
        Image.new("RGB", (12, 10)).save(os.fsdecode(os.path.join(raw_root, cls, b"\xe9t\xe9.jpg")), "JPEG")
    ds = build_dataset("folder", "test", root=tmp_path)
    assert ds.classes == ["c\ufffdt", "d\ufffdg"] and len(ds) == 2
    assert ds.load_image(0).size == (12, 10)
    # an image file that is listed but broken or unreadable fails at load with one ImageError naming it
    Path(ds.samples[1][0]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError) as err:
        ds.load_image(1)
    assert "\ufffdt\ufffd.jpg" in sentence(err.value)
    real_open = builtins.open

    def denied(path, *a, **kw):
        if os.fspath(path) == ds.samples[0][0]:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)
    monkeypatch.setattr("frpt.data.images.open", denied, raising=False)
    with pytest.raises(ImageError, match="cannot be read"):
        ds.load_image(0)


def test_folder_dangling_symlink_and_directory_named_like_an_image(tmp_path):
    for c in ("a", "b", "c", "d"):
        jpeg(tmp_path / c / "x.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "d" / "y.jpg")
    (tmp_path / "c" / "dir.jpg").mkdir()
    ds = build_dataset("folder", "test", root=tmp_path)
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith(("y.jpg", "dir.jpg"))]
    for i in bad:
        with pytest.raises(ImageError):
            ds.load_image(i)


def test_split_file_problems(tmp_path):
    for c in ("a", "b", "c", "d"):
        jpeg(tmp_path / c / "x.jpg")
    split = tmp_path.parent / f"{tmp_path.name}-split.txt"
    for content, match in (("a train\na test\n", "twice"), ("a sideways\n", "malformed"), ("zz train\n", "zz"),
                           ("a test\nb test\nc test\nd test\n", "no classes")):
        split.write_text(content)
        refused("folder", "train", tmp_path, match, split_file=split)
    refused("folder", "train", tmp_path, "missing", split_file=tmp_path / "absent.txt")
    split.write_bytes(b"\xff\xfe a train\n")
    refused("folder", "train", tmp_path, split_file=split)


# ---------------------------------------------------------------------------------------------- Cars / Aircraft

def test_cars_garbled_annotation_file(tmp_path):
    refused("cars", "train", tmp_path, "cars_annos.mat")  # missing
    (tmp_path / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file" + os.urandom(200))
    refused("cars", "train", tmp_path, "not a valid Cars annotation file")
    import scipy.io
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"something_else": np.zeros(3)})
    refused("cars", "train", tmp_path, "not a valid Cars annotation file")


def test_aircraft_missing_and_garbled(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    refused("aircraft", "train", tmp_path, "variants.txt")
    (data / "variants.txt").write_text("707\n727\n737\n747\n")
    refused("aircraft", "train", tmp_path, "images_variant_train.txt")
    for part, lines in (("train", "1 707\n2 727\n"), ("val", "3 737\n"), ("test", "4 747\n")):
        (data / f"images_variant_{part}.txt").write_text(lines)
    msg = refused("aircraft", "train", tmp_path, "missing")
    assert str(data / "images" / "1.jpg") in msg and "(and 1 more)" in msg  # train classes 707, 727: ids 1, 2
    (data / "images_variant_val.txt").write_text("5 777\n")
    refused("aircraft", "train", tmp_path, "777")
    (data / "images_variant_val.txt").write_text("lonely\n")
    refused("aircraft", "train", tmp_path, "malformed")


def test_never_a_bare_python_exception(tmp_path):
    """A grab bag of roots: only FRPTError may come out."""
    (tmp_path / "CUB_200_2011").mkdir()
    (tmp_path / "CUB_200_2011" / "images.txt").write_bytes(os.urandom(300))
    for name in ("cub", "cars", "aircraft", "folder"):
        for root in (tmp_path, tmp_path / "CUB_200_2011", tmp_path / "CUB_200_2011" / "images.txt"):
            try:
                build_dataset(name, "train", root=root)
            except FRPTError as exc:
                sentence(exc)
