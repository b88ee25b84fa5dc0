"""The Warp gallery page (pages/6_Warp_gallery.py) on the built-in demo, through the app's router."""
from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from frpt.demo import available_demos

pytestmark = pytest.mark.skipif(not {"frpt", "pt"} <= set(available_demos()), reason="demo checkpoints missing")

PAGE = "pages/6_Warp_gallery.py"


def _open(demo: str = "frpt") -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.session_state["frpt.source"] = "Demo"
    at.session_state["frpt.demo"] = demo
    at.run()
    at.switch_page(PAGE).run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _captions(at: AppTest) -> list[str]:
    return [c for image in at.get("image") for c in image.captions]


def _focus(caption: str) -> int:
    return int(re.search(r"focus (\d+)%", caption).group(1))


def test_gallery_shows_n_pairs_sorted_by_focus():
    at = _open()
    assert at.title[0].value == "Warp gallery"
    captions = _captions(at)
    assert len(captions) == 16 and len(at.get("image")) == 16  # the default N, one picture per image pair
    focus = [_focus(c) for c in captions]
    assert focus == sorted(focus, reverse=True)
    assert {"Mean focus score", "Mean box share (identity warp)", "Median peak zoom"} <= {m.label for m in at.metric}
    assert len(at.get("download_button")) == 1

    at.slider(key="w.gallery.n").set_value(8).run()
    _ok(at)
    assert len(_captions(at)) == 8


def test_changing_the_sort_key_reorders():
    at = _open()
    by_focus = _captions(at)
    at.selectbox(key="w.gallery.sort").set_value("class").run()
    _ok(at)
    by_class = _captions(at)
    assert sorted(by_class) == sorted(by_focus) and by_class != by_focus
    names = [c.split(" · ")[0].split(" ", 1)[1] for c in by_class]
    assert names == sorted(names)
    at.selectbox(key="w.gallery.sort").set_value("peak zoom").run()
    zoom = [float(re.search(r"zoom ×([\d.]+)", c).group(1)) for c in _captions(at)]
    assert zoom == sorted(zoom, reverse=True)


def test_seed_and_chosen_classes():
    at = _open()
    first = _captions(at)
    at.number_input(key="w.gallery.seed").set_value(7).run()
    _ok(at)
    assert sorted(_captions(at)) != sorted(first)  # another seed, another sample
    at.radio(key="w.gallery.mode").set_value("Chosen classes").run()
    chosen = at.multiselect(key="w.gallery.classes").value
    at.multiselect(key="w.gallery.classes").set_value(chosen[:1]).run()
    _ok(at)
    captions = _captions(at)
    assert captions and all(f" {chosen[0]} · " in c for c in captions)


def test_checkpoint_without_prompt_shows_one_sentence():
    at = _open("pt")
    assert len(at.info) == 1 and "no prompt" in at.info[0].value
    assert not at.get("image")
