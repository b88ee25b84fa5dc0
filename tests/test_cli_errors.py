"""`python -m frpt` on bad input: exit status 2 and exactly one line on stderr ("error: <sentence>."), no traceback,
no JSON on stdout."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from frpt.checkpoint import save_checkpoint
from frpt.config import model_config
from frpt.models import build_model

REPO = Path(__file__).resolve().parents[1]


def cli_error(*args: str, without: str = "") -> str:
    """Run the CLI (with the Python package ``without`` made unimportable) and return its one error line."""
    hide = f"import sys; sys.modules[{without!r}] = None; " if without else "import sys; "
    proc = subprocess.run([sys.executable, "-c", hide + "from frpt.cli import main; sys.exit(main(sys.argv[1:]))",
                           *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cli") / "ckpt"
    save_checkpoint(folder, build_model(model_config("paper", "dpp+pt", num_classes=3, input_size=64)),
                    classes=["a", "b", "c"], dataset={"name": "synthetic", "root": None}, epoch=1)
    return folder


@pytest.mark.parametrize("kind", ["missing", "html", "truncated"])  # more kinds in-process: tests/test_images.py
def test_retrieve_bad_query(ckpt, tmp_path, kind):
    query = tmp_path / "query.jpg"
    if kind == "html":
        query.write_text("<!doctype html><html><body>not a bird</body></html>")
    elif kind == "truncated":
        Image.new("RGB", (64, 64), (1, 2, 3)).save(query, "PNG")
        query.write_bytes(query.read_bytes()[:60])
    # the query is checked first (a second), before the checkpoint: even with no checkpoint the query is named
    checkpoint = tmp_path / "no-such-checkpoint" if kind == "missing" else ckpt
    msg = cli_error("retrieve", "--checkpoint", checkpoint, "--dataset", "synthetic", "--query", query, "--quiet")
    assert "query.jpg" in msg


def test_evaluate_bad_folder_roots(tmp_path):
    msg = cli_error("evaluate", "--preset", "pt", "--dataset", "folder", "--root", tmp_path / "BAD", "--quiet")
    assert "BAD" in msg and "does not exist" in msg
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / "tree" / c / "x.jpg")
    for c in ("c", "d", "e"):
        (tmp_path / "tree" / c).mkdir()
    msg = cli_error("evaluate", "--preset", "pt", "--dataset", "folder", "--root", tmp_path / "tree", "--quiet")
    assert str(tmp_path / "tree" / "c") in msg and "(and 2 more)" in msg


def test_evaluate_tampered_checkpoint(ckpt, tmp_path):
    import shutil

    bad = tmp_path / "ckpt"
    shutil.copytree(ckpt, bad)
    weights = bad / "model-e0001.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # flip the last byte (a zero-initialised tensor ends in 0)
    msg = cli_error("evaluate", "--checkpoint", bad, "--dataset", "synthetic", "--quiet")
    assert "sha256" in msg


def test_train_out_under_a_file_and_garbled_resume(tmp_path):
    (tmp_path / "file").write_text("x")
    common = ("train", "--dataset", "synthetic", "--preset", "paper", "--variant", "dpp+pt", "--input-size", "64",
              "--batch-size", "8", "--epochs", "1", "--limit-batches", "1", "--quiet")
    msg = cli_error(*common, "--out", tmp_path / "file" / "run")
    assert "file" in msg and "cannot access" in msg
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "card.json").write_text(json.dumps({"format": "frpt-checkpoint", "format_version": 1})[:-3])
    msg = cli_error(*common, "--out", tmp_path / "run", "--resume")
    assert "card.json" in msg


def test_embed_index_that_fits_no_budget(ckpt):
    """The gallery is embedded and stored; the index that fits nothing is one sentence naming the option, and
    nothing is left beside the gallery. A budget that is no size is refused before any embedding."""
    msg = cli_error("embed", "--checkpoint", ckpt, "--dataset", "synthetic", "--no-umap", "--quiet", "--index",
                    "--memory-budget-gb", "0.000001")
    assert "No index of 240 x" in msg and "--memory-budget-gb" in msg
    assert not list((ckpt / "gallery").glob("*.index")) and list((ckpt / "gallery").glob("*.npz"))
    msg = cli_error("embed", "--checkpoint", ckpt, "--dataset", "synthetic", "--index", "--memory-budget-gb", "-1")
    assert "--memory-budget-gb -1.0 is not a size" in msg


@pytest.mark.parametrize("command", [("evaluate",), ("embed", "--recompute")])  # a stored gallery needs no engine
def test_an_engine_whose_runtime_is_not_installed_is_one_sentence_naming_the_package(ckpt, command):
    msg = cli_error(*command, "--checkpoint", ckpt, "--dataset", "synthetic", "--engine", "onnxruntime", "--quiet",
                    without="onnxruntime")
    assert "needs the Python package `onnxruntime`" in msg and "--engine auto" in msg
