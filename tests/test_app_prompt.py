"""The Prompt explorer's what-if (issue 21), driven through Streamlit's AppTest on the built-in demo: an edit of the
prompt changes the query's ranking and AP, one click restores the learned prompt's; the sweep curve is computed on
demand when it is not stored, and the classes the prompt helps and hurts are shown with an example."""
from __future__ import annotations

import io
import re
import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from frpt.demo import available_demos, bundled_cub_checkpoints

PAGE = "pages/1_Prompt_explorer.py"
pytestmark = pytest.mark.skipif("frpt" not in available_demos(), reason="demo checkpoints missing")
RANK = re.compile(r"^\d+\. #(\d+) · (-?\d\.\d{3})$")


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture
def page():
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.session_state["frpt.demo"] = at.session_state["w.demo"] = "frpt"
    at = at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(at: AppTest) -> dict[str, tuple[float, list[str]]]:
    """Per row (learned, edited, identity): the AP shown and the top-K as "#index" strings, in rank order."""
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    aps = [float(m.value) for m in at.metric if m.label == "AP"]
    captions = [img.caption for i in at.get("image") for img in i.proto.imgs]
    ranks = [RANK.match(c).group(1) for c in captions if RANK.match(c)]
    k = len(ranks) // 3
    assert len(aps) == 3 and k == at.slider(key="prompt.k").value
    return {name: (aps[i], ranks[i * k:(i + 1) * k]) for i, name in enumerate(("learned", "edited", "identity"))}


def test_an_edit_changes_ranking_and_ap_and_reset_restores_the_learned_prompt(page):
    at = page
    start = _shown(at)
    assert start["edited"] == start["learned"]  # no edit yet: the learned prompt itself
    assert start["identity"] != start["learned"]
    assert at.button(key="prompt.reset").disabled

    at.select_slider(key="w.prompt.scale").set_value(0.5).run()
    edited = _shown(at)
    assert edited["learned"] == start["learned"] and edited["identity"] == start["identity"]
    assert edited["edited"][1] != start["learned"][1]  # a tighter crop ranks the gallery differently
    assert abs(edited["edited"][0] - start["learned"][0]) > 0.005
    assert any("Edited prompt: scale=0.5" in m.value for m in at.markdown)
    delta = next(m for m in at.metric if m.label == "AP" and m.delta)
    assert delta.delta.endswith(" vs learned")  # the shown APs are rounded: their difference may be 0.001 off
    assert float(delta.delta.split()[0]) == pytest.approx(edited["edited"][0] - start["learned"][0], abs=0.0011)

    at.select_slider(key="w.prompt.temperature").set_value(0.25).run()
    both = _shown(at)
    assert both["edited"] != edited["edited"]  # the temperature is used by the model, not only drawn
    assert any("Edited prompt: temperature=0.25, scale=0.5" in m.value for m in at.markdown)

    at.button(key="prompt.reset").click().run()
    back = _shown(at)
    assert back == start
    assert at.select_slider(key="w.prompt.scale").value == 1.0
    assert at.select_slider(key="w.prompt.temperature").value == 1.0
    # the choice survives a page switch
    at.select_slider(key="w.prompt.scale").set_value(0.8).run()
    at = at.switch_page("pages/4_Retrieval.py").run().switch_page(PAGE).run()
    assert at.select_slider(key="w.prompt.scale").value == 0.8 and _shown(at)["edited"] != start["learned"]


def test_an_uploaded_query_is_ranked_without_hits(page):
    from PIL import Image

    at = page
    at.radio(key="w.prompt.source").set_value("Upload").run()
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), (200, 40, 40)).save(buf, format="PNG")
    at.get("file_uploader")[0].upload("red.png", buf.getvalue(), "image/png").run()
    assert not at.exception and not at.error
    assert sum("has no class" in c.value for c in at.caption) == 3
    captions = [img.caption for i in at.get("image") for img in i.proto.imgs]
    assert sum(bool(RANK.match(c)) for c in captions) == 3 * at.slider(key="prompt.k").value


@pytest.mark.slow
def test_the_sweep_is_computed_on_demand_and_drawn_with_the_classes_it_helps_and_hurts(page, monkeypatch, tmp_path):
    from frpt import sweep

    stored = tmp_path / "curve.sweep.json"
    monkeypatch.setattr(sweep, "sweep_file", lambda *a: stored)
    monkeypatch.setattr(sweep, "TEMPERATURES", (0.5,))  # three settings keep the test short
    monkeypatch.setattr(sweep, "SCALES", ())
    at = page.run()
    assert any("not stored yet" in i.value and "python -m frpt sweep" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    at.button(key="prompt.sweep.compute").click().run()
    assert not at.exception and not at.error
    assert stored.is_file() and not any("not stored yet" in i.value for i in at.info)
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # strength and (crop prompt) box size
    assert any(c.value.startswith("Leave-one-out retrieval of all 240 test images") for c in at.caption)
    lines = [m.value for m in at.markdown if " · R@1 " in m.value]
    assert lines and all(re.search(r"R@1 \d\.\d\d → \d\.\d\d \([+-]\d\.\d\d, \d+ queries\)", v) for v in lines)
    opens = [b for b in at.button if b.label.startswith("Open #")]
    assert opens  # each class with an example query can become the query
    target = int(opens[0].label.split("#")[1])
    opens[0].click().run()
    assert at.session_state["frpt.prompt.index"] == target
    at = at.run()  # stored now: read, not computed again
    assert len(at.get("plotly_chart")) == 2 and not any("not stored yet" in i.value for i in at.info)


@pytest.fixture
def paper_without_gallery():
    """cub/paper-frpt as shipped, without a gallery an earlier test stored beside it (test_app.py's Retrieval test
    embeds the split); put back afterwards."""
    folder = bundled_cub_checkpoints()["cub/paper-frpt"] / "gallery"
    aside = folder.with_name("gallery.aside")
    if folder.exists():
        folder.rename(aside)
    yield
    shutil.rmtree(folder, ignore_errors=True)
    if aside.exists():
        aside.rename(folder)


def test_a_warp_prompt_is_edited_by_a_focus_point(cub_root, paper_without_gallery):
    """A published-preset checkpoint (the DPP warp) on real CUB images: its controls are a focus point; moving it
    changes the edited warp (and its focus score), and the split's 5,924 images are left to a background job."""
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.session_state["frpt.demo"] = at.session_state["w.demo"] = "cub/paper-frpt"
    at.session_state["frpt.root.cub"] = at.session_state["w.root.cub"] = str(cub_root)
    at = at.switch_page(PAGE).run()
    assert not at.exception and not at.error
    # no stored gallery: its background job is queued (jobs are off in the suite), nothing is embedded here
    assert any("Embedding the first" in i.value for i in at.info)
    assert any("paper-frpt" in c.value and "queued" in c.value for c in at.caption)  # the sidebar's job line

    def focus() -> str:
        return next(m.value for m in at.metric if m.label == "DPP focus score")

    learned = focus()
    assert at.slider(key="w.prompt.focus_x").disabled
    at.toggle(key="w.prompt.focus_on").set_value(True).run()
    at.slider(key="w.prompt.focus_x").set_value(0.05).run()
    at.slider(key="w.prompt.focus_y").set_value(0.05).run()
    assert not at.exception and not at.error
    assert focus() != learned  # the warp now magnifies the top-left corner, away from the bird's box
    at.button(key="prompt.reset").click().run()
    assert focus() == learned and not at.toggle(key="w.prompt.focus_on").value


def test_a_checkpoint_without_prompt_says_so_in_one_sentence():
    at = AppTest.from_file("../app.py", default_timeout=300)
    at.run()
    at.session_state["frpt.demo"] = at.session_state["w.demo"] = "pt"
    at = at.switch_page(PAGE).run()
    assert not at.exception and not at.error
    assert len(at.info) == 1 and "has no DPP" in at.info[0].value
    assert not at.get("select_slider") and len(at.get("image")) == 1  # no editor, no ranking: only the image
