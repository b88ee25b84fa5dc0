"""The comparison views on the built-in demo: A/B retrieval (two result rows, one click to a query B helps most)
and the Embedding space page's class picker, nearest-neighbour colouring and checkpoint-against-checkpoint maps."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from frpt.demo import available_demos

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not {"frpt", "pt"} <= set(available_demos()),
                                reason="demo checkpoints missing (python -m frpt.demo --rebuild)")


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=300)
    at.session_state["frpt.source"] = "Demo"
    at.session_state["frpt.demo"] = "frpt"
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.fixture(scope="module")
def ab() -> AppTest:
    return _page("7_AB_retrieval.py")


def test_ab_page_shows_both_checkpoints_top_k(ab):
    _ok(ab)
    assert ab.session_state["frpt.ab.a"] == "pt" and ab.session_state["frpt.ab.b"] == "frpt"
    rows = [m.value for m in ab.markdown if m.value.startswith(("**A: ", "**B: "))]
    assert rows[0].startswith("**A: pt**") and rows[1].startswith("**B: frpt**")
    k = ab.slider(key="ab.k").value
    assert len(ab.get("image")) == 1 + 2 * k  # the query, then K results per checkpoint
    results = [c.value for c in ab.caption if re.match(r"\d+\. #\d+ · ", c.value)]
    assert len(results) == 2 * k
    row = lambda c: int(re.match(r"\d+\. #(\d+)", c).group(1))  # noqa: E731
    in_a, in_b = {row(c) for c in results[:k]}, {row(c) for c in results[k:]}
    assert {row(c) for c in results[:k] if c.endswith(":orange-badge[dropped]")} == in_a - in_b
    assert {row(c) for c in results[k:] if c.endswith(":blue-badge[new]")} == in_b - in_a
    labels = {m.label for m in ab.metric}
    assert {"mAP A (pt)", "mAP B (frpt)", "AP under B"} <= labels


def test_clicking_a_query_b_helps_most_makes_it_the_query(ab):
    helps = [b for b in ab.button if b.key and b.key.startswith("ab.go.B helps most.")]
    assert helps, "the demo's frpt checkpoint should help some queries over pt"
    target = next(b for b in helps if int(b.key.rsplit(".", 1)[1]) != ab.session_state["frpt.ab.index"])
    row = int(target.key.rsplit(".", 1)[1])
    target.click().run()
    _ok(ab)
    assert ab.session_state["frpt.ab.index"] == row
    assert ab.get("image")[0].proto.imgs[0].caption.startswith(f"query #{row} ")
    delta = next(m for m in ab.metric if m.label == "AP under B")
    assert delta.delta.startswith("+")  # B helps this query


def test_a_comparison_picked_on_another_dataset_falls_back_to_the_baseline_not_the_first_choice():
    at = AppTest.from_file(str(ROOT / "pages" / "3_Embedding_space.py"), default_timeout=300)
    at.session_state["frpt.source"] = "Demo"
    at.session_state["frpt.demo"] = "frpt"
    at.session_state["frpt.emb.mode"] = "Against another checkpoint"
    at.session_state["frpt.emb.other"] = "cub/compact-pt"  # picked while the sidebar was on a CUB checkpoint
    at.run()
    _ok(at)
    assert at.selectbox(key="w.emb.other").value == "pt"  # the frozen baseline, not "frpt" (the first option)


def test_embedding_page_class_picker_and_nearest_neighbour_colouring():
    at = _page("3_Embedding_space.py")
    _ok(at)
    classes = at.multiselect(key="w.emb.focus").options
    at.multiselect(key="w.emb.focus").set_value(classes[:2]).run()
    at.radio(key="w.emb.colour").set_value("Nearest neighbour hit").run()
    _ok(at)
    figures = _figures(at)
    assert len(figures) == 2
    for fig in figures:
        names = [t.get("name") for t in fig["data"]]
        assert names[0] == "other classes"
        assert set(names[1:]) <= {"nearest neighbour: same class", "nearest neighbour: other class"}
        shown = {c[1] for t in fig["data"][1:] for c in t["customdata"]}
        assert shown == set(classes[:2])


def test_embedding_page_puts_two_checkpoints_side_by_side():
    at = _page("3_Embedding_space.py")
    at.radio(key="w.emb.mode").set_value("Against another checkpoint").run()
    _ok(at)
    assert at.session_state["frpt.emb.other"] == "pt"
    titles = [fig["layout"]["title"]["text"] for fig in _figures(at)]
    assert titles == ["pt: after the head", "frpt: after the head"]
    # one colour per class across both maps
    colours = [{t["name"]: t["marker"]["color"] for t in fig["data"]} for fig in _figures(at)]
    assert colours[0] == colours[1]
    # a selection is ringed on both maps and its thumbnails shown beside them
    at.session_state["emb.selected"] = [3, 7]
    at.run()
    _ok(at)
    for fig in _figures(at):
        ring = next(t for t in fig["data"] if t["name"] == "selected")
        assert sorted(row for row, in ring["customdata"]) == [3, 7]
    assert "**Selected (2)**" in [m.value for m in at.markdown]
    assert len(at.get("image")) == 2


@pytest.mark.slow
def test_first_page_of_a_process_survives_the_background_umap_warmup(tmp_path):
    """The warm-up thread used to import umap (pandas, sklearn, scipy) while the page imported plotly and pandas:
    about one first run in three raised "partially initialized module 'pandas'". Fresh processes, warm-up on."""
    import os
    import subprocess
    import sys

    script = tmp_path / "first_run.py"
    script.write_text(
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(ROOT / 'pages' / '3_Embedding_space.py')!r}, default_timeout=300)\n"
        "at.session_state['frpt.source'] = 'Demo'\nat.session_state['frpt.demo'] = 'frpt'\n"
        "at.session_state['frpt.emb.mode'] = 'Against another checkpoint'\nat.run()\n"
        "print('EXCEPTIONS', [e.value for e in at.exception], 'METRICS', len(at.metric))\n")
    env = {**os.environ, "FRPT_WARM_UMAP": "1", "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300).stdout
        assert "EXCEPTIONS [] METRICS 6" in out, out[-1000:]
