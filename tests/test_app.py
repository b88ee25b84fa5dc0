"""Every page of the app runs on the built-in demo without an exception and shows its main element; the
navigation lists the pages in reading order with Home first."""
from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from frpt.demo import available_demos

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not available_demos(),
                                reason="demo checkpoints missing (python -m frpt.demo --rebuild)")

PAGES = ["pages/1_Prompt_explorer.py", "pages/2_Attributions.py", "pages/3_Embedding_space.py",
         "pages/4_Retrieval.py", "pages/5_Checkpoints.py"]
# What app.py registers with st.navigation, in order: (file, title in the navigation, url path).
NAVIGATION = [("pages/0_Home.py", "Home", ""), ("pages/1_Prompt_explorer.py", "Prompt explorer", "Prompt_explorer"),
              ("pages/6_Warp_gallery.py", "Warp gallery", "Warp_gallery"),
              ("pages/2_Attributions.py", "Attributions", "Attributions"),
              ("pages/3_Embedding_space.py", "Embedding space", "Embedding_space"),
              ("pages/4_Retrieval.py", "Retrieval", "Retrieval"),
              ("pages/7_AB_retrieval.py", "A/B retrieval", "AB_retrieval"),
              ("pages/5_Checkpoints.py", "Checkpoints", "Checkpoints"),
              ("pages/8_Reproduction.py", "Reproduction", "Reproduction")]
REPRODUCTION = "pages/8_Reproduction.py"


@pytest.fixture(autouse=True)
def clear_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield


@pytest.fixture(scope="module")
def app():
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _images(at: AppTest) -> int:
    return len(at.get("image"))


def test_home_shows_card(app):
    _ok(app)
    assert app.title[0].value == "FRPT Studio"
    assert len(app.table) >= 1
    assert any("frpt" in str(t.value) or "paper" in str(t.value) for t in app.table)
    # the demo's gallery is complete: live figures beside the card's (same dataset), measured on every test image
    (live,) = [d.value.set_index("metric") for d in app.dataframe if "live, after the head" in d.value.columns]
    assert list(live.columns) == ["card", "live, after the head", "live, before the head"]
    assert live.loc["queries", "live, after the head"] == live.loc["queries", "card"]
    assert 0 < live.loc["recall@1", "live, after the head"] <= 1


def _navigation(at: AppTest) -> list[tuple[str, str, str]]:
    """(file, title, url path) of every page st.navigation registered in the last run, in registration order (the
    registry AppTest itself keeps to resolve switch_page; the sidebar's order is this order)."""
    return [(Path(i["script_path"]).resolve().relative_to(REPO).as_posix(), i["page_name"], i["url_pathname"])
            for i in at._registered_pages.values()]


def test_navigation_lists_home_first_then_every_page_in_order(app):
    assert _navigation(app) == NAVIGATION
    assert {Path(f).name for f, _, _ in NAVIGATION} == {p.name for p in (REPO / "pages").glob("*.py")}


def test_home_links_every_other_page(app):
    linked = [link.proto.page for link in app.get("page_link")]
    assert sorted(linked) == sorted(url for _, _, url in NAVIGATION[1:])


@pytest.mark.parametrize("page", ["pages/6_Warp_gallery.py", "pages/7_AB_retrieval.py"])
def test_page_without_its_own_test_runs(app, page):
    at = app.switch_page(page).run()
    _ok(at)
    assert at.title  # the other pages have a test of their own below


def test_reproduction_shows_tables_and_charts(app):
    at = app.switch_page(REPRODUCTION).run()
    _ok(at)
    assert at.title[0].value == "Reproduction"
    assert len(at.get("plotly_chart")) == 3 and len(at.dataframe) == 4  # Tables 1, 2, 5 + provenance
    assert any("ResNet-50" in i.value and "efficientnet_lite0" in i.value for i in at.info)


def test_reproduction_without_results_file_says_so_in_one_sentence(app, monkeypatch, tmp_path):
    from frpt import reproduction

    monkeypatch.setattr(reproduction, "RESULTS", tmp_path / "results.json")
    at = app.switch_page(REPRODUCTION).run()
    assert not at.exception and not at.error
    assert len(at.warning) == 1 and "No results file" in at.warning[0].value
    assert len(at.get("plotly_chart")) == 3  # the paper's numbers alone
    (tmp_path / "results.json").write_text('[{"preset": "paper", ')  # half-written
    at.run()
    assert not at.exception and len(at.warning) == 1 and "could not be read" in at.warning[0].value


def test_prompt_explorer_shows_five_views_and_focus_score(app):
    at = app.switch_page(PAGES[0]).run()
    _ok(at)
    if (available_demos().get("frpt")) and at.session_state["frpt.demo"] == "frpt":
        # the learned, edited and unprompted rows (picture + top 8 each), then the edited prompt's five views
        assert _images(at) >= 3 * (1 + 8) + 5
        assert "Sampling grid" in [img.caption for i in at.get("image") for img in i.proto.imgs]
        labels = [m.label for m in at.metric]
        assert "DPP focus score" in labels  # synthetic images have a part box
    at.select_slider(key="w.prompt.temperature").set_value(0.5).run()
    _ok(at)


def test_attributions_page(app):
    at = app.switch_page(PAGES[1]).run()
    _ok(at)
    assert _images(at) >= 3


def test_embedding_space_page(app):
    at = app.switch_page(PAGES[2]).run()
    _ok(at)
    assert len(at.get("plotly_chart")) == 2
    assert {"R@1", "NMI", "Silhouette"} <= {m.label for m in at.metric}


def test_retrieval_page(app):
    at = app.switch_page(PAGES[3]).run()
    _ok(at)
    assert _images(at) >= 1 + 8 + 2
    assert any(m.label == "Average precision" for m in at.metric)


def test_checkpoints_page(app):
    at = app.switch_page(PAGES[4]).run()
    _ok(at)
    assert len(at.table) >= 1 and len(at.dataframe) >= 2


def test_bad_upload_shows_one_sentence_and_good_upload_retrieves(app):
    import io

    from PIL import Image

    at = app.switch_page(PAGES[3]).run()
    at.radio(key="w.ret.source").set_value("Upload").run()
    _ok(at)
    uploader = at.get("file_uploader")[0]
    if not hasattr(uploader, "upload"):
        pytest.skip("this Streamlit's AppTest cannot upload files")
    uploader.upload("broken.png", b"not an image at all", "image/png").run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.png" in at.error[0].value and "Traceback" not in at.error[0].value
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), (200, 40, 40)).save(buf, format="PNG")
    at.get("file_uploader")[0].upload("red.png", buf.getvalue(), "image/png").run()
    _ok(at)
    assert _images(at) >= 1 + 8 + 2


def test_shipped_cub_checkpoint_opens_in_the_prompt_explorer(app, cub_root):
    at = app.switch_page(PAGES[0])
    at.session_state["frpt.demo"] = at.session_state["w.demo"] = "cub/paper-frpt"
    at.session_state["frpt.root.cub"] = at.session_state["w.root.cub"] = str(cub_root)
    at.run()
    _ok(at)
    # original, saliency, warped, grid, magnification of a real CUB test image (and, once a gallery is stored
    # beside the checkpoint, the what-if rankings below them)
    assert _images(at) >= 5
    assert "Sampling grid" in [img.caption for i in at.get("image") for img in i.proto.imgs]
    assert any("5,924 test images" in c.value for c in at.caption)


def test_a_large_test_split_is_picked_by_number_not_listed(app, monkeypatch):
    """Above LISTED_IMAGES the picker is a number box (a selectbox of a million options would be sent to the
    browser on every rerun); the position picks the same image, the choice survives a rerun and a page switch."""
    from frpt.ui import widgets

    monkeypatch.setattr(widgets, "LISTED_IMAGES", 3)
    # back on the demo (the test above left this module's session on cub/paper-frpt, whose 5,924 test images would
    # be a background job here, queued: the suite runs no jobs)
    app.session_state["frpt.demo"] = app.session_state["w.demo"] = "frpt"
    at = app.switch_page(PAGES[3]).run()
    at.radio(key="w.ret.source").set_value("Gallery").run()  # an earlier test of this module left "Upload"
    _ok(at)
    assert not [s for s in at.selectbox if s.label == "Test image"]
    box = at.number_input(key="w.ret.position")
    assert "in all classes" in box.label and int(box.max) >= 5 and box.value == 0
    box.set_value(5).run()
    _ok(at)
    assert at.session_state["frpt.ret.index"] == 5
    assert any(c.value.startswith("#5 · ") for c in at.caption)
    assert _images(at) >= 1 + 8 + 2
    at = at.switch_page(PAGES[0]).run().switch_page(PAGES[3]).run()
    assert at.number_input(key="w.ret.position").value == 5 and at.session_state["frpt.ret.index"] == 5


def test_a_live_figure_off_the_card_says_by_how_many_queries_and_what_computed_each():
    from frpt.ui.logic import live_vs_card

    card = {"dataset": {"name": "cub"}, "metrics": {"recall@1": 0.68}, "inference": {"engine": "openvino",
                                                                                    "precision": "bf16"}}
    assert live_vs_card(card, "cub", {"recall@1": 0.68 + 0.4 / 5924, "queries": 5924}, "openvino", "bf16") is None
    note = live_vs_card(card, "cub", {"recall@1": 0.68 - 3 / 5924, "queries": 5924}, "torch", "fp32")
    assert note.startswith("Live R@1 is below the card's by 3 of 5,924 queries") and "openvino bf16" in note
    assert "torch fp32 here" in note
    assert live_vs_card(card, "synthetic", {"recall@1": 0.1, "queries": 240}, "torch", "fp32") is None
