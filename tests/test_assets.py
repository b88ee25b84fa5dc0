"""The checkpoints shipped in assets/: they load, and the CUB one reproduces the figures its card (and
bench/RESULTS.md) reports when a CUB copy is at hand."""
import pytest

from frpt.checkpoint import load_checkpoint
from frpt.demo import bundled_cub_checkpoints

COMPACT = "cub/compact-frpt"  # the compact preset's CUB FRPT checkpoint, offered first (bench/ship_checkpoint.py)
LITE1 = "cub/compact-frpt-lite1"  # the same recipe on efficientnet_lite1 at 240 px with the whitened head, fp16-stored
AT_288 = "cub/compact-frpt-288"  # the whitened recipe on efficientnet_lite0 at 288 px, fp16-stored: the best CUB row


def test_a_cub_checkpoint_is_shipped_small_and_without_optimiser_state():
    shipped = bundled_cub_checkpoints()
    assert {COMPACT, LITE1, AT_288, "cub/paper-frpt", "cub/official-dpp+pt"} <= set(shipped)
    assert next(iter(shipped)) == COMPACT  # the app offers the recipe that beats the backbone first
    for folder in shipped.values():
        names = sorted(p.name for p in folder.iterdir() if p.name != "gallery")
        assert names[0] == "card.json" and not any(n.startswith("train-state") for n in names)
        assert sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) < 5 * 2**20
        model, card = load_checkpoint(folder)
        assert card["dataset"]["name"] == "cub" and len(card["classes"]) == 100
        assert card["classes"][0].startswith("001.") and card["classes"][-1].startswith("100.")


@pytest.mark.parametrize("name", ["cub/paper-frpt", "cub/official-dpp+pt"])
def test_shipped_cub_checkpoint_reproduces_its_recorded_recall(cub_root, name):
    from frpt.data import build_dataset, build_transform
    from frpt.evaluation import evaluate

    model, card = load_checkpoint(bundled_cub_checkpoints()[name])
    test_set = build_dataset("cub", "test", root=cub_root, transform=build_transform(card["input_size"], train=False))
    metrics = evaluate(model, test_set, progress=False)
    assert metrics["queries"] == 5924
    # 1/5924 = 0.00017 per query: allow a couple of near-ties to flip under another thread count
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"):
        assert metrics[key] == pytest.approx(card["metrics"][key], abs=5e-4), key


@pytest.mark.slow
@pytest.mark.parametrize("name", [COMPACT, LITE1, AT_288])
def test_shipped_compact_checkpoint_reproduces_its_recorded_check_on_cub(cub_root, name):
    """Their full-split figures take minutes of four-view embedding (tests/test_engine.py repeats them on the
    compiled engine); each card also records the live metrics on the first 10 test classes
    (bench/ship_checkpoint.py), which this repeats through the whole model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from ship_checkpoint import check_subset

    from frpt.data import build_dataset, build_transform
    from frpt.evaluation import evaluate

    model, card = load_checkpoint(bundled_cub_checkpoints()[name])
    test_set = build_dataset("cub", "test", root=cub_root, transform=build_transform(card["input_size"], train=False))
    subset, classes = check_subset(test_set, len(card["check"]["classes"]))
    assert classes == card["check"]["classes"] and len(subset) == card["check"]["images"]
    metrics = evaluate(model, subset, progress=False)
    # ~590 queries: 1/590 = 0.0017 a query; allow two near-ties to flip on another CPU
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"):
        assert metrics[key] == pytest.approx(card["check"]["metrics"][key], abs=4e-3), key
    # Live, on the same images, it beats the same preset's frozen baseline (GeM, original + flip, same backbone) on
    # MAP@R by a margin far outside float noise (recorded: lite0 0.620 against 0.593, +0.028 on these 578 queries;
    # lite1 0.648 against 0.614, +0.034; lite0 at 288 px 0.652 against 0.614, +0.038; R@1 is within a few queries
    # on this easy 10-class subset, so it is not asserted). Full split: bench/RESULTS.md.
    from frpt.config import model_config
    from frpt.models import build_model

    pt = build_model(model_config("compact", "pt", input_size=card["input_size"], backbone=card["model"]["backbone"]))
    base = evaluate(pt, subset, progress=False)
    assert metrics["map@r"] >= base["map@r"] + 0.015


def test_bench_results_records_carry_what_a_rerun_needs():
    import json
    from pathlib import Path

    rows = json.loads((Path(__file__).resolve().parents[1] / "bench" / "results.json").read_text())
    required = {"dataset", "preset", "variant", "backbone", "recall@1", "recall@2", "recall@4", "recall@8", "map@r",
                "learned_params", "train_seconds", "epochs", "input_size", "commit", "command"}
    for r in rows:
        assert required <= set(r), (r.get("preset"), r.get("variant"), sorted(required - set(r)))
        assert r["dataset"] == "cub" and r["preset"] in ("paper", "official", "compact")
        assert "/work/" not in r["command"] and not r["command"].split("--root ")[-1].startswith("/")
        assert r["variant"] in ("pt", "finetune", "dpp+pt", "pt+cah", "no-in", "frpt")
        assert r["command"].startswith(("python -m frpt ", "python bench/"))
        assert all(0 <= r[k] <= 1 for k in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"))
        assert r["recall@1"] <= r["recall@2"] <= r["recall@4"] <= r["recall@8"]
    pt = [r for r in rows if r["variant"] == "pt" and r["preset"] != "compact"]
    assert pt and all(r["command"].startswith("python -m frpt evaluate --preset pt --backbone efficientnet_lite0 "
                                              "--dataset cub --root ") for r in pt)


def test_checkpoint_card_summary_tells_a_bounded_dpp_from_the_published_one():
    from frpt.demo import demo_checkpoint_dir
    from frpt.checkpoint import load_card
    from frpt.ui.logic import card_summary

    card = load_card(bundled_cub_checkpoints()["cub/paper-frpt"])
    bounded = card_summary(card)
    published = card_summary({**card, "model": {**card["model"], "saliency_bound": 0.0}})
    assert bounded["saliency bound"] == "2" and bounded["DPP lr scale"] == "0.0002"
    assert published["saliency bound"] == "none (as published)"
    assert "saliency bound" not in card_summary(load_card(demo_checkpoint_dir("pt")))
    crop = card_summary(load_card(demo_checkpoint_dir("frpt")))  # the compact crop prompt
    assert "saliency bound" not in crop and crop["prompt"].startswith("rigid crop")
    assert crop["prompt trained on"] == "class labels"
    lite1 = card_summary(load_card(bundled_cub_checkpoints()[LITE1]))
    assert lite1["head"].startswith("whitened (shrinkage 0.7") and lite1["weights stored as"].startswith("float16")
    at_288 = card_summary(load_card(bundled_cub_checkpoints()[AT_288]))
    assert at_288["head"].startswith("whitened (shrinkage 0.9") and at_288["weights stored as"].startswith("float16")
    assert "head" not in bounded and "weights stored as" not in crop  # the plain CAH head, fp32 files


def test_the_embedding_page_knows_when_before_and_after_the_head_are_one_map():
    from frpt.checkpoint import load_card
    from frpt.demo import demo_checkpoint_dir
    from frpt.ui.logic import head_is_identity

    cub = bundled_cub_checkpoints()
    assert head_is_identity(load_card(demo_checkpoint_dir("pt")))  # no head at all
    assert head_is_identity(load_card(demo_checkpoint_dir("no-cah")))  # DPP + PT: no head either
    # retrained after the crop fix, its validation kept the untrained CAH (identity init): one map, and the page says so
    assert head_is_identity(load_card(cub["cub/compact-frpt"]))
    assert not head_is_identity(load_card(cub["cub/compact-frpt-288"]))  # its head whitens
    assert not head_is_identity(load_card(cub["cub/paper-frpt"]))  # the published CAH (no identity init)
    frpt = load_card(demo_checkpoint_dir("frpt"))
    assert not head_is_identity(frpt)  # its head whitens (frpt.demo.WHITENED), whatever epoch its CAH stopped at
    open_gate = {**frpt, "model": {**frpt["model"], "whitening": False}, "compact": {**frpt["compact"], "head_epochs": 0}}
    trained = {**open_gate, "compact": {**open_gate["compact"], "head_epochs": 2}}
    assert head_is_identity(open_gate) and not head_is_identity(trained)


def test_compact_checkpoints_show_their_training_record_without_a_log():
    """The compact recipe writes no log.csv; the Checkpoints page draws its card's record instead: the prompt's
    proxy loss and the head's validation R@1, with the epoch chosen on held-out training classes marked."""
    from frpt.checkpoint import load_card
    from frpt.demo import demo_checkpoint_dir
    from frpt.ui.logic import compact_figures

    card = load_card(bundled_cub_checkpoints()["cub/compact-frpt"])
    figures = compact_figures(card)
    assert set(figures) == {"prompt", "head"}
    report = card["compact"]
    assert list(figures["prompt"].data[0].y) == report["prompt_losses"]
    assert "kept: " + report["prompt_kept"] in figures["prompt"].layout.title.text
    loss, recall = figures["head"].data
    assert list(recall.y) == [r["recall@1"] for r in report["head_validation"]]
    assert list(loss.x) == list(range(1, len(report["head_validation"])))  # epoch 0 is the untrained head
    assert [s.x0 for s in figures["head"].layout.shapes] == [report["head_epochs"]]
    assert compact_figures(load_card(demo_checkpoint_dir("pt"))) == {}  # nothing trained, nothing to draw
    assert compact_figures(load_card(bundled_cub_checkpoints()["cub/paper-frpt"])) == {}  # has its log.csv
