"""Every page of the app runs on the built-in demo without an exception and shows its main element."""
from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from frpt.demo import available_demos

pytestmark = pytest.mark.skipif(not available_demos(), reason="demo checkpoints missing (python -m frpt.demo --rebuild)")

PAGES = ["pages/1_Prompt_explorer.py", "pages/2_Attributions.py", "pages/3_Embedding_space.py",
         "pages/4_Retrieval.py", "pages/5_Checkpoints.py"]


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


def test_prompt_explorer_shows_five_views_and_focus_score(app):
    at = app.switch_page(PAGES[0]).run()
    _ok(at)
    if (available_demos().get("frpt")) and at.session_state["frpt.demo"] == "frpt":
        assert _images(at) == 5
        labels = [m.label for m in at.metric]
        assert "DPP focus score" in labels  # synthetic images have a part box
    at.slider(key="prompt.temperature").set_value(0.5).run()
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
    assert _images(at) == 5  # original, saliency, warped, grid, magnification of a real CUB test image
    assert any("5924 test images" in c.value for c in at.caption)
