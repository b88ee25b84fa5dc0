"""The prompt sweep (frpt.sweep, `frpt sweep`): settings, the learned setting reproducing `evaluate`, the compact
feature cache reused, the stored curve, and the classes the prompt helps and hurts."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from frpt.config import model_config
from frpt.data import build_dataset, build_transform
from frpt.demo import available_demos
from frpt.errors import ConfigError
from frpt.evaluation import evaluate
from frpt.models import RANDOM_WEIGHTS, build_model
from frpt.sweep import (SettingResult, SweepResult, class_effects, load_sweep, run_sweep, save_sweep, sweep_file,
                        sweep_settings)

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model(model_config("compact", "frpt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS).eval()
    torch.nn.init.normal_(net.prompt.conv.weight, std=1.0)
    return net


@pytest.fixture(scope="module")
def test_set():
    return build_dataset("synthetic", "test", transform=build_transform(SIZE, train=False), num_classes=10,
                         images_per_class=4)


def test_default_settings_hold_identity_learned_and_enough_points():
    crop = sweep_settings("crop")
    names = [s.name for s in crop]
    assert names[:2] == ["identity", "learned"] and len(crop) >= 7
    assert any(n.startswith("scale=") for n in names) and any(n.startswith("temperature=") for n in names)
    warp = [s.name for s in sweep_settings("warp")]
    assert len(warp) >= 7 and not any(n.startswith("scale=") for n in warp)
    # a value equal to the learned one is the learned point, not a second one
    assert [s.name for s in sweep_settings("crop", [1.0, 0.5], [1.0])] == ["identity", "learned", "temperature=0.5"]


@pytest.mark.parametrize("kind, temperatures, scales, match", [
    ("crop", [0.0], [], "temperature of 0 is not usable"), ("crop", [0.5], [-2.0], "box scale of -2"),
    ("warp", [0.5], [0.8], "applies to the crop prompt")])
def test_bad_settings_are_one_sentence(kind, temperatures, scales, match):
    with pytest.raises(ConfigError, match=match):
        sweep_settings(kind, temperatures, scales)


def test_learned_setting_reproduces_evaluate_and_edits_change_the_figures(model, test_set):
    result = run_sweep(model, test_set, sweep_settings("crop", [0.25], [0.5]), batch_size=16, precision="fp32")
    expected = evaluate(model, test_set, batch_size=16, precision="fp32", progress=False)
    one_query = 1 / len(test_set)
    assert abs(result.get("learned").metrics["recall@1"] - expected["recall@1"]) < one_query
    assert result.get("learned").metrics["map@r"] == pytest.approx(expected["map@r"], abs=1e-3)
    figures = {s.setting: (s.metrics["recall@1"], round(s.metrics["map@r"], 4)) for s in result.settings}
    assert len(set(figures.values())) > 1  # the settings are really different prompts
    assert result.get("identity").temperature is None and result.get("scale=0.5").scale == 0.5
    assert set(result.top1) == {"identity", "learned"} and len(result.top1["learned"]) == len(test_set)
    assert (result.top1["learned"] != np.arange(len(test_set))).all()  # leave-one-out: never the query itself


def test_the_warp_prompt_is_swept_by_temperature_and_its_learned_setting_reproduces_evaluate(test_set):
    torch.manual_seed(0)
    warp = build_model(model_config("paper", "frpt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS).eval()
    torch.nn.init.normal_(warp.prompt.conv.weight, std=1e-2)
    result = run_sweep(warp, test_set, sweep_settings("warp", [0.5]), batch_size=16, precision="fp32")
    expected = evaluate(warp, test_set, batch_size=16, precision="fp32", progress=False)
    assert result.prompt == "warp" and [s.setting for s in result.settings] == ["identity", "learned",
                                                                                 "temperature=0.5"]
    assert abs(result.get("learned").metrics["recall@1"] - expected["recall@1"]) < 1 / len(test_set)


def _backbone_images(model, run) -> tuple[object, int]:
    """(run()'s result, how many images went through the frozen backbone meanwhile)."""
    seen = []
    hook = model.backbone.register_forward_hook(lambda _m, args, _out: seen.append(len(args[0])))
    try:
        return run(), sum(seen)
    finally:
        hook.remove()


def test_feature_cache_is_written_then_reused_with_the_same_figures(model, test_set, tmp_path):
    """Backbone passes are counted on the torch engine (a hook on the torch backbone; a compiled engine runs the
    same passes elsewhere, tests/test_engine.py)."""
    settings = sweep_settings("crop", [0.5], [])  # identity, learned, temperature=0.5
    n = len(test_set)
    live, live_passes = _backbone_images(model, lambda: run_sweep(model, test_set, settings, batch_size=16,
                                                                  precision="fp32", engine="torch"))
    # original + flip once per image, then two crop views for each setting but the identity (its crop is the image)
    assert live_passes == 2 * n + 2 * 2 * n
    cold = run_sweep(model, test_set, settings, batch_size=16, precision="fp32", engine="torch",
                     feature_cache=tmp_path)
    chunks = {p.parent.name.split("-")[0] for p in (tmp_path / "test").glob("*/chunk-000000.npy")}
    assert chunks == {"orig", "flip", "crop"}  # crop-<prompt digest> and crop-flip-<prompt digest>
    warm, warm_passes = _backbone_images(model, lambda: run_sweep(model, test_set, settings, batch_size=16,
                                                                  precision="fp32", engine="torch",
                                                                  feature_cache=tmp_path))
    assert warm_passes == 2 * n  # only temperature=0.5's crops: the rest is read from the cache
    for name in ("identity", "learned", "temperature=0.5"):
        assert abs(cold.get(name).metrics["recall@1"] - live.get(name).metrics["recall@1"]) <= 1 / n  # fp16 maps
        assert warm.get(name).metrics == cold.get(name).metrics


def test_a_model_without_prompt_cannot_be_swept(test_set):
    pt = build_model(model_config("compact", "pt", num_classes=3, input_size=SIZE), RANDOM_WEIGHTS)
    with pytest.raises(ConfigError, match="no prompt to sweep"):
        run_sweep(pt, test_set, sweep_settings("crop"))


def _result(labels, identity, learned) -> SweepResult:
    settings = [SettingResult("identity", None, 1.0, {"recall@1": 0.1, "map@r": 0.1}),
                SettingResult("learned", 1.0, 1.0, {"recall@1": 0.2, "map@r": 0.2})]
    return SweepResult("crop", settings, np.array(labels), {"identity": np.array(identity),
                                                             "learned": np.array(learned)})


def test_stored_curve_round_trips_and_stale_or_damaged_files_are_ignored(tmp_path):
    result = _result([0, 0, 1, 1], [1, 0, 0, 2], [1, 2, 3, 2])
    card = {"files": {"weights_sha256": "abc"}}
    path = save_sweep(tmp_path / "g.sweep.json", result, card)
    back = load_sweep(path, card)
    assert [s.line() for s in back.settings] == [s.line() for s in result.settings]
    assert back.top1["learned"].tolist() == [1, 2, 3, 2] and back.path == path
    assert load_sweep(path, {"files": {"weights_sha256": "other"}}) is None  # retrained weights: stale
    path.write_text('{"format": "frpt-prompt-sweep", "settings": [')
    assert load_sweep(path, card) is None


def test_the_stored_curve_is_found_wherever_the_dataset_lives(fake_cub, tmp_path):
    """The curve's file name does not hash the dataset root's absolute path (a curve shipped beside a checkpoint in
    assets/ must be found on another machine): the same split read through a symlink, from a copy elsewhere or
    from the folder above CUB_200_2011 names the same file; other weights, another split or other contents do not."""
    first = fake_cub(tmp_path / "a" / "CUB_200_2011")
    (tmp_path / "link").symlink_to(first, target_is_directory=True)
    copy = tmp_path / "elsewhere" / "deeper" / "CUB_200_2011"
    shutil.copytree(first, copy)
    card = {"files": {"weights_sha256": "abc"}, "input_size": 64, "path": str(tmp_path / "ckpt")}

    def name(root, split="test", card=card):
        return sweep_file(card, build_dataset("cub", split, root=root), root)

    path = name(first)
    assert path.parent == tmp_path / "ckpt" / "gallery" and path.name.startswith("cub-test-")
    assert path.name.endswith(".sweep.json")
    for root in (tmp_path / "link", copy, first.parent, Path(os.path.relpath(copy))):
        assert name(root) == path, root
    assert sweep_file(card, build_dataset("cub", "test", root=copy)) == path  # the root argument is not the key
    assert name(first, "train") != path
    assert name(first, card={**card, "files": {"weights_sha256": "retrained"}}) != path
    assert name(first, card={**card, "input_size": 96}) != path
    labels = copy / "image_class_labels.txt"  # two test images of the copy trade classes: other contents
    lines = labels.read_text().splitlines()
    lines[6], lines[9] = lines[6].replace(" 3", " 4"), lines[9].replace(" 4", " 3")
    labels.write_text("\n".join(lines) + "\n")
    assert name(copy) != path


def test_the_shipped_sweep_of_the_288_checkpoint_is_found_on_this_cub(cub_root):
    """assets/cub/compact-frpt-288 ships its CUB prompt sweep (bench/RESULTS.md, "The prompt's strength swept on
    CUB"): it is found under this machine's CUB folder, is for these weights, and holds the recorded figures."""
    from frpt.checkpoint import load_card
    from frpt.demo import bundled_cub_checkpoints

    card = load_card(bundled_cub_checkpoints()["cub/compact-frpt-288"])
    test = build_dataset("cub", "test", root=cub_root)
    result = load_sweep(sweep_file(card, test, cub_root), card)
    assert result is not None and len(result.settings) == 12 and len(result.labels) == len(test) == 5924
    assert np.array_equal(result.labels, test.targets)
    figures = {s.setting: (round(100 * s.metrics["recall@1"], 2), round(100 * s.metrics["map@r"], 2))
               for s in result.settings}
    assert figures["learned"] == (68.05, 23.87) and figures["identity"] == (61.95, 20.25)


def test_class_effects_rank_classes_by_their_r1_change_with_a_flipped_example():
    labels = [0, 0, 1, 1, 2, 2]
    # class 0: identity 0/2 -> learned 2/2; class 1: 2/2 -> 1/2; class 2: unchanged
    identity = [2, 2, 3, 2, 5, 4]
    learned = [1, 0, 4, 2, 5, 4]
    helps, hurts = class_effects(_result(labels, identity, learned))
    assert [(e.label, e.change) for e in helps] == [(0, 1.0)]
    assert [(e.label, e.change) for e in hurts] == [(1, -0.5)]
    assert helps[0].example == 0 and (helps[0].neighbour_identity, helps[0].neighbour_learned) == (2, 1)
    assert hurts[0].example == 2 and (hurts[0].neighbour_identity, hurts[0].neighbour_learned) == (3, 4)


def _frpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frpt", *args, "--quiet"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
@pytest.mark.skipif("frpt" not in available_demos(), reason="demo checkpoints missing")
def test_cli_sweep_on_the_demo_matches_evaluate_and_stores_the_curve(tmp_path):
    ckpt = tmp_path / "frpt"
    shutil.copytree(available_demos()["frpt"], ckpt, ignore=shutil.ignore_patterns("gallery"))
    proc = _frpt("sweep", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--temperatures", "0.5",
                 "--scales", "0.8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    settings = {line["setting"]: line for line in lines[:-1]}
    assert list(settings) == ["identity", "learned", "temperature=0.5", "scale=0.8"]
    summary = lines[-1]
    curve = Path(summary["curve"])
    assert curve.parent == ckpt / "gallery" and curve.is_file() and summary["images"] == 240
    stored = json.loads(curve.read_text())
    assert [s["setting"] for s in stored["settings"]] == list(settings)
    evaluated = _frpt("evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    expected = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert abs(settings["learned"]["recall@1"] - expected["recall@1"]) <= 0.005  # within 0.5 R@1 points
    assert settings["learned"]["recall@1"] > settings["identity"]["recall@1"]  # the demo's prompt helps (0.57/0.30)


@pytest.mark.skipif(not available_demos(), reason="demo checkpoints missing")
@pytest.mark.parametrize("extra, demo, message", [
    (("--temperatures", "-1"), "frpt", "temperature of -1 is not usable"),
    ((), "pt", "has no prompt to sweep")])
def test_cli_sweep_bad_input_is_one_sentence(extra, demo, message):
    proc = _frpt("sweep", "--checkpoint", str(available_demos()[demo]), "--dataset", "synthetic", *extra)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
