"""The README's screenshots: the running app on real CUB images, driven in headless Chromium.

Starts ``streamlit run app.py`` on a free local port with ``FRPT_CUB_ROOT`` set to ``--root``, opens Home, picks
``--checkpoint`` in the sidebar's "Demo checkpoint" selectbox as a user does, then follows the sidebar links (one
Streamlit session) to each page, waits until the page has finished running (no running indicator or spinner, its
main elements drawn, nothing changing for a few polls) and every image has loaded, and saves the view:

  prompt_explorer   the Prompt explorer's what-if, with the learned box made smaller (``--box-size``)
  warp_gallery      the Warp gallery: test images beside what the prompt makes of them
  embedding_space   Embedding space: the UMAP maps before and after the head
  retrieval         Retrieval: a query's top-K with hits marked

Each is resized to ``--width`` px and stored as JPEG in ``--out``. The pages rank the stored test gallery, so
embed it once beforehand or the first page embeds it (minutes on a CPU):

    python -m frpt embed --checkpoint assets/cub/compact-frpt-288 --dataset cub --root ../shared/data/CUB_200_2011
    python bench/screenshots.py [--checkpoint cub/compact-frpt-288] [--root ../shared/data/CUB_200_2011]

Needs chromium + chromedriver (``make browser``). Prints one JSON line per screenshot; exits 1 if a page showed an
exception.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SHOTS = ("prompt_explorer", "warp_gallery", "embedding_space", "retrieval")
PAGE = {"prompt_explorer": "Prompt_explorer", "warp_gallery": "Warp_gallery",
        "embedding_space": "Embedding_space", "retrieval": "Retrieval"}

# The page at rest: the script not running (no running icon or "Running..." text), no element faded as stale while
# a rerun is pending, no spinner or progress bar, every <img> loaded (complete, with pixels), no skeleton left.
_IDLE_JS = """
const q = s => document.querySelectorAll(s);
const status = Array.from(q('[data-testid="stStatusWidget"]')).map(e => e.innerText).join(' ');
const imgs = Array.from(q('[data-testid="stMain"] img'));
return {
  running: q('[data-testid="stStatusWidgetRunningIcon"]').length > 0 || /Running|Stop/.test(status),
  stale: q('[data-testid="stMain"] [data-stale="true"]').length,
  spinners: q('[data-testid="stSpinner"], [data-testid="stProgress"], [data-testid="stSkeleton"]').length,
  images: imgs.length,
  pending: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
};
"""

# Scroll the element whose text starts with arguments[0] (a heading or a widget label; '@plotly': the first chart)
# to the top of the view, arguments[1] px below it; null: back to the top.
_SCROLL_JS = """
const want = arguments[0];
const scroller = n => { for (let e = n; e; e = e.parentElement) {
  const y = getComputedStyle(e).overflowY;
  if ((y === 'auto' || y === 'scroll') && e.scrollHeight > e.clientHeight) return e; }
  return document.scrollingElement; };
const nodes = Array.from(document.querySelectorAll(
  '[data-testid="stHeading"], [data-testid="stPlotlyChart"], [data-testid="stWidgetLabel"]'));
if (want === null) { nodes.forEach(n => { scroller(n).scrollTop = 0; }); return true; }
const hit = nodes.find(n => want === '@plotly' ? n.getAttribute('data-testid') === 'stPlotlyChart'
                                                : n.innerText.trim().startsWith(want));
if (!hit) return false;
hit.scrollIntoView({block: 'start'});
const box = scroller(hit);
box.scrollTop = Math.max(0, box.scrollTop - arguments[1]);
return true;
"""


def wait_idle(driver, timeout: float, polls: int = 4) -> dict:
    """Until the page has been at rest (``_IDLE_JS``) for ``polls`` polls in a row, 0.5 s apart."""
    deadline, streak, state = time.time() + timeout, 0, {}
    while time.time() < deadline:
        state = driver.execute_script(_IDLE_JS) or {}
        idle = not (state.get("running") or state.get("stale") or state.get("spinners") or state.get("pending"))
        streak = streak + 1 if idle else 0
        if streak >= polls:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"the page did not come to rest in {timeout:.0f} s: {state}")


def settle(driver, page: str, checkpoint: str, timeout: float) -> dict:
    """The page has finished running on ``checkpoint`` and its images are there."""
    import bench_sessions as bs

    bs.wait_rendered(driver, page, timeout, time.time(), lambda s: s.get("shown") == checkpoint)
    state = wait_idle(driver, timeout)
    time.sleep(1.5)  # plotly's first paint and image decoding
    return wait_idle(driver, timeout)


def set_select_slider(driver, label: str, steps: int) -> str | None:
    """Move the slider labelled ``label`` by ``steps`` (negative: left) with the keyboard, as a user can; returns the
    value it shows then (None: no such slider)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for box in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSlider"]'):
        if box.text.strip().startswith(label):
            thumb = box.find_element(By.CSS_SELECTOR, 'input[type="range"], [role="slider"]')
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", thumb)
            key = Keys.ARROW_LEFT if steps < 0 else Keys.ARROW_RIGHT
            for _ in range(abs(steps)):
                ActionChains(driver).send_keys(key).perform()  # to the focused thumb (a visually hidden input)
                time.sleep(0.3)
            return thumb.get_attribute("aria-valuetext")
    return None


def save(driver, path: Path, width: int, quality: int) -> tuple[int, int]:
    from PIL import Image

    shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    if shot.width > width:
        shot = shot.resize((width, round(shot.height * width / shot.width)), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.save(path, "JPEG", quality=quality, optimize=True, progressive=True)
    return shot.size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="cub/compact-frpt-288", help="a shipped checkpoint's name in the sidebar")
    p.add_argument("--root", default=os.environ.get("FRPT_CUB_ROOT", "../shared/data/CUB_200_2011"),
                   help="CUB_200_2011 folder (default: $FRPT_CUB_ROOT or ../shared/data/CUB_200_2011)")
    p.add_argument("--out", default="assets/screenshots", help="folder for the JPEGs (relative to the repository)")
    p.add_argument("--shots", nargs="+", choices=SHOTS, default=list(SHOTS))
    p.add_argument("--width", type=int, default=1200, help="stored width in px")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality")
    p.add_argument("--window", default="1500,1250", help="browser viewport, W,H px")
    p.add_argument("--box-size", type=int, default=-3,
                   help="what-if: steps of the Box size slider from the learned box (negative: smaller)")
    p.add_argument("--timeout", type=float, default=1200, help="s per page")
    args = p.parse_args()

    import bench_sessions as bs

    root = Path(args.root).resolve()
    if not (root / "images.txt").is_file():
        p.error(f"no CUB_200_2011 at {args.root}")
    # relative to the repository (the server's working directory), so no path of this machine shows in the sidebar
    os.environ["FRPT_CUB_ROOT"] = os.path.relpath(root, ROOT)
    out = (ROOT / args.out).resolve()
    log_path = ROOT / "runs" / "screenshots" / "streamlit.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = bs.free_port()
    failed = False
    with open(log_path, "wb") as log:
        server = bs.start_server(port, log)
        driver = bs.new_driver()
        try:
            w, h = (int(v) for v in args.window.split(","))
            driver.set_window_size(w, h)
            driver.get(f"http://127.0.0.1:{port}/")
            bs.wait_rendered(driver, "Home", args.timeout, time.time())
            bs.pick_checkpoint(driver, args.checkpoint, args.timeout)
            time.sleep(1)
            settle(driver, "Home", args.checkpoint, args.timeout)
            for name in args.shots:
                page = PAGE[name]
                t0 = time.time()
                bs.nav_to(driver, page, args.timeout)
                time.sleep(1)
                settle(driver, page, args.checkpoint, args.timeout)
                anchor, extra = None, {}
                if name == "prompt_explorer":
                    extra["box_size"] = set_select_slider(driver, "Box size", args.box_size)
                    if extra["box_size"] is not None:
                        time.sleep(1)
                        settle(driver, page, args.checkpoint, args.timeout)
                    anchor = "What if the prompt were different?"
                elif name == "embedding_space":
                    anchor = "@plotly"
                driver.execute_script(_SCROLL_JS, anchor, 60)
                time.sleep(1.5)
                exc = bs.exceptions(driver)
                failed |= bool(exc)
                path = out / f"{name}.jpg"
                size = save(driver, path, args.width, args.quality)
                print(json.dumps({"screenshot": str(path.relative_to(ROOT)), "page": page, "px": list(size),
                                  "kB": round(path.stat().st_size / 1024), "seconds": round(time.time() - t0, 1),
                                  **extra, "exceptions": exc}), flush=True)
        finally:
            bs.close_drivers([driver])
            bs.stop_server(server)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
