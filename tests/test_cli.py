"""The command line end to end: train, evaluate, retrieve, info, export (subprocesses, as a user runs them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def frpt(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "frpt", *args, "--quiet"] if args[0] != "info" else
                          [sys.executable, "-m", "frpt", *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_train_evaluate_retrieve_info_on_synthetic(tmp_path, preset):
    out = tmp_path / preset
    umap = ("--no-umap",) if preset == "official" else ()
    trained = last_json(frpt("train", "--dataset", "synthetic", "--preset", preset, "--input-size", "64",
                             "--batch-size", "8", "--epochs", "2", "--limit-batches", "2", "--out", str(out), *umap))
    assert trained["epoch"] == 2 and trained["queries"] == 240
    # The final test evaluation is stored as the checkpoint's gallery (and its maps): the app's first visit and
    # `frpt embed` read it instead of embedding the split again.
    from frpt.gallery import load_gallery
    from frpt.metrics import retrieval_metrics
    gallery_path = Path(trained["gallery"])
    stored = load_gallery(gallery_path)
    assert len(stored.ids) == 240 and stored.ids[5] == "synthetic/test/00005"
    assert retrieval_metrics(stored.embeddings.after, stored.embeddings.labels)["recall@1"] == trained["recall@1"]
    assert len(trained.get("umap", [])) == (0 if umap else 1) and all(Path(p).is_file() for p in trained.get("umap", []))
    written = gallery_path.stat().st_mtime_ns
    embedded = last_json(frpt("embed", "--checkpoint", str(out), "--dataset", "synthetic", "--no-umap"))
    assert embedded["gallery"] == str(gallery_path) and gallery_path.stat().st_mtime_ns == written
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,train_loss,lr,recall@1,seconds" and len(log) == 3

    # fp32 as training's own evaluation: the default (auto) is bf16 on CPUs with native bf16, which moves R@1
    evaluated = last_json(frpt("evaluate", "--checkpoint", str(out), "--dataset", "synthetic", "--precision", "fp32"))
    assert evaluated["queries"] == 240 and evaluated["preset"] == preset
    # the default engine ran both, and each says so (galleries and cards record it; frpt.engine)
    assert (evaluated["engine"], evaluated["precision"]) == (stored.engine, "fp32") == (embedded["engine"], "fp32")
    assert evaluated["recall@1"] == pytest.approx(trained["recall@1"])  # same checkpoint, same protocol
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi"):
        assert 0.0 <= evaluated[key] <= 1.0

    from frpt.data import build_dataset
    query = tmp_path / "query.png"
    build_dataset("synthetic", "test").load_image(5).save(query)
    ranked = last_json(frpt("retrieve", "--checkpoint", str(out), "--dataset", "synthetic", "--query", str(query),
                            "--k", "5"))
    results = ranked["results"]
    assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99  # the query itself is in the gallery
    assert results[0]["path"] == "synthetic/test/00005" and ranked["index"]["kind"] == "exact"
    # `embed --index` saves frpt.index's choice beside the gallery (exact at 240 rows) and `retrieve` uses it
    indexed = last_json(frpt("embed", "--checkpoint", str(out), "--dataset", "synthetic", "--no-umap", "--index"))
    assert indexed["index"]["kind"] == "exact" and indexed["index"]["n"] == 240
    assert (Path(indexed["index"]["path"]) / "gallery.json").is_file()
    again = last_json(frpt("retrieve", "--checkpoint", str(out), "--dataset", "synthetic", "--query", str(query),
                           "--k", "5"))
    assert [r["path"] for r in again["results"]] == [r["path"] for r in results]
    assert again["results"][0]["score"] == pytest.approx(scores[0], abs=1e-3)  # fp16 vectors: scores move ~1e-4

    info = last_json(frpt("info", "--checkpoint", str(out)))
    assert info["preset"] == preset and info["parameters"]["backbone"]["learned"] == 0

    shared = tmp_path / f"{preset}-shared"
    exported = last_json(frpt("export", "--checkpoint", str(out), "--out", str(shared)))
    assert exported["files"] == ["card.json", "log.csv", "model-e0002.safetensors"]  # no optimiser state
    assert (shared / "log.csv").read_text() == (out / "log.csv").read_text()
    again = last_json(frpt("evaluate", "--checkpoint", str(shared), "--dataset", "synthetic", "--precision", "fp32"))
    assert again["recall@1"] == evaluated["recall@1"] and again["map@r"] == evaluated["map@r"]
    refused = frpt("export", "--checkpoint", str(out), "--out", str(shared), check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_evaluate_pt_on_cub_queries_every_test_image(cub_root):
    result = last_json(frpt("evaluate", "--preset", "pt", "--backbone", "efficientnet_lite0", "--dataset", "cub",
                            "--root", str(cub_root), "--input-size", "64",
                            "--batch-size", "128"))
    assert result["queries"] == 5924 and result["variant"] == "pt"
    assert result["recall@1"] > 0.05  # 100 unseen classes: chance is about 1 %


def test_bad_input_is_one_sentence_and_exit_2(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x80\x04not really a pickle")
    proc = frpt("evaluate", "--checkpoint", str(bad), "--dataset", "synthetic", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "pickle" in proc.stderr


def test_a_released_batch_larger_than_the_split_shrinks_to_it_and_says_so(tmp_path):
    """The official preset's batch is 256; the built-in synthetic training split has 240 images. The run trains
    with one batch of 240, says so in one line, and its card records the batch that ran."""
    proc = frpt("train", "--dataset", "synthetic", "--preset", "official", "--epochs", "1", "--input-size", "64",
                "--out", str(tmp_path / "run"), "--no-umap")
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: the training split has 240 images, fewer than one batch of 256; training with batches "
                     "of 240."]
    from frpt.checkpoint import load_card

    card = load_card(tmp_path / "run")
    assert card["train"]["batch_size"] == 240 and card["global_batch_size"] == 240 and card["epoch"] == 1
    assert card["inference"]["precision"] == "fp32"
    from frpt.ui.logic import card_summary  # the Checkpoints page says what computed the test figures

    assert card_summary(card)["test figures computed on"] == f"{card['inference']['engine']} fp32"
