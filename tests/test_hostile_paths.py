"""Hostile paths typed into the app's folder fields (checkpoint folder, dataset root) or passed to the CLI: a
folder that is neither, ``..``, a symlink loop, /proc, a device file, a FIFO, a folder of 100,000 files. Each
ends in one sentence from the library functions the sidebar calls (load_card, load_checkpoint, build_dataset),
writes nothing, and is judged without listing the big folder or walking into /proc, /sys or /dev."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from frpt.checkpoint import load_card, load_checkpoint
from frpt.data import build_dataset
from frpt.errors import CheckpointError, DatasetError
from frpt.paths import in_system_folder

MANY = 100_000
ROOTED = ("cub", "cars", "aircraft", "folder")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    """name -> path, all made under one temporary folder (plus real system paths)."""
    base = tmp_path_factory.mktemp("hostile")
    (base / "plain").mkdir()
    (base / "plain" / "notes.txt").write_text("not a checkpoint, not a dataset")
    (base / "many").mkdir()
    for i in range(MANY):
        (base / "many" / f"f{i:06d}.txt").touch()
    os.symlink("loop_b", base / "loop_a")
    os.symlink("loop_a", base / "loop_b")
    os.symlink("self", base / "self")
    os.mkfifo(base / "fifo")
    # files a checkpoint or a dataset would read, pointing at endless or blocking things
    for name, target in (("card_dev", "/dev/zero"), ("card_proc", "/proc/self/environ")):
        (base / name).mkdir()
        os.symlink(target, base / name / "card.json")
        os.symlink(target, base / name / "images.txt")
    (base / "card_fifo").mkdir()
    os.mkfifo(base / "card_fifo" / "card.json")
    os.mkfifo(base / "card_fifo" / "images.txt")
    # a class-per-folder root whose "class" leads back up to / (as /proc/self/root does)
    (base / "up").mkdir()
    os.symlink("/", base / "up" / "a_root")
    os.symlink(base, base / "up" / "b_parent")
    (base / "inner" / "cwd").mkdir(parents=True)
    return {"plain": str(base / "plain"), "many": str(base / "many"), "loop": str(base / "loop_a"),
            "self": str(base / "self"), "fifo": str(base / "fifo"), "card_dev": str(base / "card_dev"),
            "card_proc": str(base / "card_proc"), "card_fifo": str(base / "card_fifo"), "up": str(base / "up"),
            "dotdot": "..", "proc": "/proc", "proc_self": "/proc/self", "sys": "/sys", "dev_zero": "/dev/zero",
            "dev_null": "/dev/null", "nul": "bad\0name", "_base": str(base), "_cwd": str(base / "inner" / "cwd")}


CASES = ["plain", "many", "loop", "self", "fifo", "card_dev", "card_proc", "card_fifo", "up", "dotdot", "proc",
         "proc_self", "sys", "dev_zero", "dev_null", "nul"]


def snapshot(folder: str) -> list[tuple[str, int]]:
    """Every entry and its mtime; the 100,000-file folder by its own mtime (which any write inside changes)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if os.path.basename(dirpath) == "many":
            dirnames[:], filenames[:] = [], []
        out += [(os.path.join(dirpath, n), os.lstat(os.path.join(dirpath, n)).st_mtime_ns)
                for n in dirnames + filenames]
    return sorted(out)


@pytest.fixture()
def guarded(corpus, monkeypatch, compiled_model_cache):
    """Run from a folder inside the corpus (so ``..`` is its parent), fail on any walk into a system folder or
    any listing of the 100,000-file folder, and check afterwards that nothing was written."""
    monkeypatch.chdir(corpus["_cwd"])
    before = snapshot(corpus["_base"]), snapshot(str(compiled_model_cache))
    real_walk, real_scandir, real_listdir = os.walk, os.scandir, os.listdir

    def refuse_big_or_system(path) -> None:
        p = os.fspath(path) if path is not None else "."
        assert not in_system_folder(p), f"listed a system folder: {p}"
        assert os.path.realpath(p) != os.path.realpath(corpus["many"]), "listed the 100,000-file folder"

    monkeypatch.setattr(os, "walk", lambda top, *a, **k: (refuse_big_or_system(top), real_walk(top, *a, **k))[1])
    monkeypatch.setattr(os, "scandir", lambda p=".": (refuse_big_or_system(p), real_scandir(p))[1])
    monkeypatch.setattr(os, "listdir", lambda p=".": (refuse_big_or_system(p), real_listdir(p))[1])
    yield
    monkeypatch.undo()
    assert (snapshot(corpus["_base"]), snapshot(str(compiled_model_cache))) == before, "something was written"


def one_sentence(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and msg.endswith(".") and "Traceback" not in msg, repr(msg)
    msg.encode("utf-8")
    return msg


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_folder(corpus, guarded, case):
    for load in (load_card, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(corpus[case])
        one_sentence(err.value)


@pytest.mark.parametrize("name", ROOTED)
@pytest.mark.parametrize("case", CASES)
def test_dataset_root(corpus, guarded, case, name):
    if name == "folder" and case == "many":  # a folder dataset lists its root by definition (scandir, no stat)
        pytest.skip("covered by test_folder_dataset_of_many_files")
    with pytest.raises(DatasetError) as err:
        build_dataset(name, "test", root=corpus[case])
    one_sentence(err.value)


@pytest.mark.parametrize("case, says", [("loop", "symlink loop"), ("self", "symlink loop"), ("proc", "system folder"),
                                        ("proc_self", "system folder"), ("sys", "system folder"),
                                        ("dev_zero", "system folder"), ("fifo", "device, pipe or socket"),
                                        ("nul", "NUL character")])
def test_the_sentence_says_what_is_wrong(corpus, guarded, case, says):
    with pytest.raises(CheckpointError, match=says):
        load_card(corpus[case])
    with pytest.raises(DatasetError, match=says):
        build_dataset("cub", "test", root=corpus[case])


def test_class_folder_leading_up_or_into_proc_is_refused_before_any_walk(corpus, guarded, monkeypatch):
    walked = []
    real_walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top, *a, **k: (walked.append(top), real_walk(top, *a, **k))[1])
    with pytest.raises(DatasetError, match="a_root"):
        build_dataset("folder", "train", root=corpus["up"])
    assert walked == []


def test_folder_dataset_of_many_files(corpus):
    with pytest.raises(DatasetError, match="0 class sub-folder"):
        build_dataset("folder", "test", root=corpus["many"])


def test_metadata_files_must_be_plain_files(corpus, guarded):
    for case in ("card_dev", "card_proc", "card_fifo"):
        with pytest.raises(CheckpointError, match="no card.json"):
            load_card(corpus[case])
        with pytest.raises(DatasetError, match="images.txt is missing"):
            build_dataset("cub", "test", root=corpus[case])


def test_cli_reports_a_hostile_root_in_one_line(corpus, capsys):
    from frpt.cli import main

    assert main(["evaluate", "--checkpoint", corpus["loop"], "--dataset", "cub", "--root", "/proc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symlink loop" in err
