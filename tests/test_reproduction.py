"""frpt.reproduction: the paper's tables beside our results.json rows, on the real file and on small fixtures."""
from __future__ import annotations

import csv
import io
import json

import pytest

from frpt import reproduction as rep
from frpt.config import VARIANTS


def _record(**over) -> dict:
    rec = {"dataset": "cub", "preset": "paper", "variant": "frpt", "backbone": "efficientnet_lite0",
           "profile": "quick", "input_size": 128, "recall@1": 0.358, "recall@2": 0.47, "recall@4": 0.6,
           "recall@8": 0.72, "map@r": 0.083, "learned_params": 560764, "train_seconds": 300.0,
           "command": "python -m frpt train --preset paper --variant frpt", "commit": "abc1234",
           "date": "2026-11-25 08:55 UTC", "machine": "x86_64 2 CPU", "dpp": "bounded"}
    return {**rec, **over}


def _write(tmp_path, records) -> str:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_paper_constants_are_the_papers_tables():
    # Table 1's CUB column as bench/ablation.py records it, and the FRPT row shared by Tables 1, 2 and 5
    assert rep.PAPER_R1 == {"pt": 44.9, "finetune": 69.5, "dpp+pt": 55.7, "pt+cah": 61.8, "no-in": 72.2, "frpt": 74.3}
    assert set(rep.TABLE1) == set(VARIANTS)
    assert rep.TABLE2_FRPT["cub"][0] == rep.PAPER_R1["frpt"] == rep.TABLE5["DPP (learned warp)"][0]
    assert rep.TABLE2_FRPT["cub"] == rep.TABLE5["DPP (learned warp)"]
    assert {p.table for p in rep.PAPER_ROWS} == set(rep.TABLES)
    for p in rep.PAPER_ROWS:  # recalls rise with K where reported
        reported = [v for v in p.recall if v is not None]
        assert reported == sorted(reported) and reported[0] == p.recall[0]


def test_bench_ablation_uses_the_one_copy():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_under_test", rep.RESULTS.parent / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PAPER_R1 is rep.PAPER_R1 and module.PAPER_PARAMS is rep.PAPER_PARAMS


def test_every_cub_table1_row_is_matched_by_variant_in_the_real_results():
    results = rep.load_results()
    assert results.rows and results.raw.startswith(b"[")
    for paper in rep.PAPER_ROWS:
        if paper.table == "Table 1" and paper.dataset == "cub":
            mine = rep.matches(paper, results.rows)
            assert mine, paper.method
            assert all(r.variant == paper.variant and r.dataset == "cub" for r in mine)


def test_rows_from_a_lent_gpu_are_read_too_and_kept_apart_from_the_cpu_rows():
    cpu = rep.load_results(rep.RESULTS).rows
    both = rep.load_results().rows
    gpu = [r for r in both if r.gpu]
    assert len(both) == len(cpu) + len(json.loads(rep.RESULTS_GPU.read_text())) and gpu
    assert all(r.where == "H100, WebP copy" and r.group.endswith(" · H100, WebP copy") for r in gpu)
    assert not {r.group for r in gpu} & {r.group for r in cpu}  # never the best row of a CPU group
    assert "lent H100" in rep.our_setting(both) and "lent" not in rep.our_setting(cpu)
    assert rep.provenance(gpu)[0]["data"].startswith("CUB re-encoded as WebP")
    groups = sorted({r.group for r in both})
    lines = [line for table in rep.TABLES for line in rep.comparison(both, table)]
    colours = {t.name: t.marker.color for t in rep.figure(lines, groups).data if t.name.startswith("ours")}
    assert len(set(colours.values())) == len(colours)  # every group its own colour


def test_matching_respects_dataset_variant_and_presets(tmp_path):
    rows = rep.load_results(_write(tmp_path, [
        _record(), _record(preset="compact", profile="compact", input_size=224),
        _record(variant="pt", dpp=None), _record(dataset="cars")])).rows
    by = {(p.table, p.method, p.dataset): p for p in rep.PAPER_ROWS}
    frpt_t1 = by["Table 1", "DPP + PT + CAH (FRPT)", "cub"]
    assert [(r.preset, r.variant) for r in rep.matches(frpt_t1, rows)] == [("paper", "frpt"), ("compact", "frpt")]
    assert [r.dataset for r in rep.matches(by["Table 1", "DPP + PT + CAH (FRPT)", "cars"], rows)] == ["cars"]
    # Table 5: the warp row takes the published-warp presets, the CAM-crop row the compact crop, the GT crop none
    assert [r.preset for r in rep.matches(by["Table 5", "DPP (learned warp)", "cub"], rows)] == ["paper"]
    assert [r.preset for r in rep.matches(by["Table 5", "Crop from a CAM-based localisation", "cub"], rows)] == \
        ["compact"]
    assert rep.matches(by["Table 5", "Crop from the ground-truth box", "cub"], rows) == []
    assert [r.prompt for r in rows] == ["bounded", "crop", "-", "bounded"]


def test_comparison_puts_ours_in_percent_beside_the_paper_and_keeps_unmatched_paper_rows(tmp_path):
    rows = rep.load_results(_write(tmp_path, [_record()])).rows
    lines = rep.comparison(rows, "Table 1", "cub")
    assert [line["paper row"] for line in lines] == [v[0] for v in rep.TABLE1.values()]
    frpt = next(line for line in lines if line["variant"] == "frpt")
    assert frpt["paper R@1"] == 74.3 and frpt["ours R@1"] == 35.8 and frpt["ours - paper R@1"] == -38.5
    assert frpt["commit"] == "abc1234" and frpt["date"] == "2026-11-25 08:55 UTC"
    assert frpt["command"].startswith("python -m frpt train")
    unmatched = [line for line in lines if line["paper row"] != "DPP + PT + CAH (FRPT)"]
    assert all(line["ours"] == "no row of ours" and line["ours R@1"] is None for line in unmatched)
    assert rep.reported_ks(lines) == [1] and rep.reported_ks(rep.comparison(rows, "Table 2")) == [1, 2, 4, 8]


def test_best_only_keeps_the_top_row_of_each_preset_and_profile(tmp_path):
    rows = rep.load_results(_write(tmp_path, [
        _record(dpp="published", **{"recall@1": 0.01}), _record(**{"recall@1": 0.358}),
        _record(profile="medium", **{"recall@1": 0.346}), _record(preset="official", **{"recall@1": 0.31})])).rows
    lines = rep.comparison(rows, "Table 1", "cub", best_only=True)
    mine = [(line["group"], line["ours R@1"]) for line in lines if line["group"]]
    assert mine == [("paper · quick 128 px", 35.8), ("paper · medium 128 px", 34.6),
                    ("official · quick 128 px", 31.0)]


def test_missing_unreadable_and_malformed_files_raise_one_sentence(tmp_path):
    with pytest.raises(rep.ResultsError, match="No results file"):
        rep.load_results(tmp_path / "absent.json")
    half = tmp_path / "half.json"
    half.write_text('[{"preset": "paper", ')
    with pytest.raises(rep.ResultsError, match="could not be read"):
        rep.load_results(half)
    with pytest.raises(rep.ResultsError, match="no list"):
        rep.load_results(_write(tmp_path, {"rows": []}))
    records = [_record(), {"preset": "paper"}, "junk", _record(**{"recall@1": None})]
    results = rep.load_results(_write(tmp_path, records))
    assert len(results.rows) == 1 and results.skipped == 3


def test_csv_round_trip(tmp_path):
    rows = rep.load_results(_write(tmp_path, [_record(), _record(variant="pt", dpp=None, date=None)])).rows
    lines = [line for table in rep.TABLES for line in rep.comparison(rows, table)]
    back = list(csv.DictReader(io.StringIO(rep.to_csv(lines))))
    assert len(back) == len(lines)
    for line, row in zip(lines, back):
        assert list(row) == list(line)
        assert row == {k: "" if v is None else str(v) for k, v in line.items()}
    assert rep.to_csv([]) == ""


def test_figure_has_the_paper_and_each_group_of_ours(tmp_path):
    rows = rep.load_results(_write(tmp_path, [_record(), _record(profile="medium")])).rows
    fig = rep.figure(rep.comparison(rows, "Table 2", "cub"))
    names = {trace.name for trace in fig.data}
    assert names == {f"paper ({rep.PAPER_SETTING})", "ours: paper · quick 128 px", "ours: paper · medium 128 px"}
    assert len(fig.data) == 3 * 4  # three traces in each of the R@1/2/4/8 facets
    paper = next(t for t in fig.data if t.name.startswith("paper"))
    assert list(paper.x) == [74.3]
    # a group keeps its colour whatever else a table shows
    colour = lambda f, name: next(t.marker.color for t in f.data if t.name == name)  # noqa: E731
    alone = rep.figure(rep.comparison(rows[1:], "Table 2", "cub"), groups=["paper · quick 128 px",
                                                                           "paper · medium 128 px"])
    assert colour(alone, "ours: paper · medium 128 px") == colour(fig, "ours: paper · medium 128 px")


def test_columns_show_only_what_the_table_reports(tmp_path):
    rows = rep.load_results(_write(tmp_path, [_record()])).rows
    t1, t5 = rep.columns(rep.comparison(rows, "Table 1", "cub")), rep.columns(rep.comparison(rows, "Table 5"))
    assert "paper params" in t1 and "paper R@2" not in t1 and "note" not in t1
    assert "paper params" not in t5 and "ours R@8" in t5 and "note" in t5

def test_a_whitened_head_and_another_backbone_are_told_apart_in_labels_and_groups(tmp_path):
    """The compact rows of bench/ablation.py --whitening and --backbone efficientnet_lite1 sit beside the plain
    lite0 ones: one preset, variant and profile, so only the label and the group can tell them apart."""
    compact = dict(preset="compact", profile="compact", input_size=224, dpp=None)
    plain = _record(**compact)
    whitened = _record(**compact, whitening=True, **{"recall@1": 0.65})
    lite1 = _record(**{**compact, "input_size": 240}, backbone="efficientnet_lite1", whitening=True)
    rows = rep.load_results(_write(tmp_path, [plain, whitened, lite1])).rows
    labels = [r.label for r in rows]
    assert len(set(labels)) == 3
    assert "+ whitening" not in labels[0] and "+ whitening" in labels[1] and "efficientnet_lite1" in labels[2]
    assert rows[0].group == rows[1].group != rows[2].group  # one backbone and profile: one colour on the figure
    lines = rep.comparison(rows, "Table 1", "cub", best_only=True)
    assert sorted((line["group"], line["ours R@1"]) for line in lines if line["group"]) == [
        ("compact · compact 224 px", 65.0), ("compact · compact 240 px · efficientnet_lite1", 35.8)]


def test_short_profile_rows_say_how_long_they_trained(tmp_path):
    """The short profile trains as long as a session allows (bench/ablation.py --epochs/--limit-batches), so two
    of its rows of one preset differ in length: their labels say it; the fixed-length profiles' labels do not."""
    short = dict(preset="paper", profile="short", input_size=224)
    four = _record(**short, epochs=4, train_images_seen=2560)
    one = _record(**short, epochs=1, train_images_seen=5856, machine="x86_64, NVIDIA H100 80GB HBM3")
    quick = _record(epochs=4, train_images_seen=2560)
    rows = rep.load_results(_write(tmp_path, [four, one, quick])).rows
    assert rows[0].label.endswith("short 224 px, 4 epochs (2,560 images)")
    assert "short 224 px, 1 epoch (5,856 images) · H100" in rows[1].label
    assert "epoch" not in rows[2].label


def test_a_probes_rows_are_told_apart_by_their_setting():
    """The issue-30 probe records several settings of one preset, variant, profile and size (bench/results.json,
    profile compact-probe): on the real file each of its rows has a label of its own, naming the setting."""
    probe = [r for r in rep.load_results().rows if r.profile == "compact-probe"]
    assert len(probe) >= 2
    labels = [r.label for r in probe]
    assert len(set(labels)) == len(labels)
    assert all(label.endswith(f" · {r.setting}") for r, label in zip(probe, labels))
