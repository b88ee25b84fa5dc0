"""Real browser: every page of `streamlit run app.py` renders in headless Chromium without an exception, and the
sidebar navigation lists the pages in reading order with Home first.

Screenshots go to tests/_artifacts/screens/<page>.png. Skipped when chromium/chromedriver are absent
(`make browser` installs Debian's chromium + chromium-driver).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from frpt.demo import available_demos

ROOT = Path(__file__).resolve().parent.parent
SCREENS = ROOT / "tests" / "_artifacts" / "screens"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# page -> (url path, element that proves the page rendered its main content, how many), in navigation order
PAGES = {"home": ("", "stTable", 1), "prompt_explorer": ("Prompt_explorer", "stImage", 1),
         "warp_gallery": ("Warp_gallery", "stHeading", 1),
         "attributions": ("Attributions", "stImage", 3), "embedding_space": ("Embedding_space", "stPlotlyChart", 2),
         "retrieval": ("Retrieval", "stImage", 11), "ab_retrieval": ("AB_retrieval", "stHeading", 1),
         "checkpoints": ("Checkpoints", "stTable", 1), "reproduction": ("Reproduction", "stPlotlyChart", 1)}
NAV_TITLES = ["Home", "Prompt explorer", "Warp gallery", "Attributions", "Embedding space", "Retrieval",
              "A/B retrieval", "Checkpoints", "Reproduction"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)), reason="chromium/chromedriver absent"),
    pytest.mark.skipif(not available_demos(), reason="demo checkpoints missing"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    yield from _serve()


def _serve():
    """A fresh `streamlit run app.py`; yields its URL."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # a page still mid-computation on a loaded machine: not what is tested
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="frpt-chrome-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={profile}", "--window-size=1500,1800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait_rendered(driver, testid: str, minimum: int, timeout: float = 240) -> None:
    """Until the script has stopped running, ``minimum`` main elements exist and the page is stable for ~3 s."""
    from selenium.webdriver.common.by import By

    deadline, stable, last = time.time() + timeout, 0, None
    while time.time() < deadline:
        status = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]')
        busy = any("Running" in e.text or "Stop" in e.text for e in status)
        busy |= bool(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"], [data-testid="stProgress"]'))
        found = len(driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]'))
        count = len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="stElementContainer"]'))
        stable = stable + 1 if (count == last and not busy and found >= minimum) else 0
        last = count
        if stable >= 3:
            return
        time.sleep(1)
    raise AssertionError(f"page did not finish rendering ({testid} >= {minimum})")


@pytest.mark.parametrize("page", list(PAGES))
def test_page_renders_without_exception(server, browser, page):
    from selenium.webdriver.common.by import By

    path, testid, minimum = PAGES[page]
    browser.get(f"{server}/{path}")
    SCREENS.mkdir(parents=True, exist_ok=True)
    try:
        _wait_rendered(browser, testid, minimum)
    finally:
        browser.save_screenshot(str(SCREENS / f"{page}.png"))
    errors = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    assert not errors, errors[0].text[:500]


@pytest.mark.parametrize("first", [("Reproduction", "stPlotlyChart", 1), ("Checkpoints", "stTable", 1)])
def test_sidebar_navigation_starts_with_home(browser, first):
    """On a fresh server whose first request is a page's URL (a bookmark), not Home: Streamlit would serve it from
    the pages/ folder with "app" first unless the page hands the run to app.py's router (ui.through_router)."""
    from selenium.webdriver.common.by import By

    fresh = _serve()
    url = next(fresh)
    try:
        path, testid, minimum = first
        browser.get(f"{url}/{path}")
        _wait_rendered(browser, testid, minimum)
        links = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNav"] [data-testid="stSidebarNavLink"]')
        titles = [link.text.strip().splitlines()[-1] for link in links]  # after the icon's ligature name
        errors = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
        assert not errors, errors[0].text[:500]
    finally:
        fresh.close()  # the server stops
    assert titles == NAV_TITLES


def test_retrieval_result_picker_follows_a_new_query(server, browser):
    """After another query (the Random button), the "Why this match?" picker shows the new ranking's first result,
    not the old query's: with positions 0..K-1 as its options it kept the previous label in the browser."""
    import re

    from selenium.webdriver.common.by import By

    def shown() -> tuple[str, str, str]:
        query = next(c.text for c in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')
                     if c.text.startswith("query:"))
        first = next(c.text for c in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')
                     if c.text.startswith("1. "))
        picker = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="Result"]')  # shows the chosen label
        return query, first, picker.get_attribute("value")

    browser.get(f"{server}/Retrieval")
    _wait_rendered(browser, "stImage", 11)
    before = shown()
    for _ in range(5):  # a random pick can be the same image
        next(b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "Random").click()
        time.sleep(1)
        _wait_rendered(browser, "stImage", 11)
        after = shown()
        if after[0] != before[0]:
            break
    assert after[0] != before[0], "Random never changed the query"
    score = re.search(r"^1\. ([0-9.]+) ·", after[1]).group(1)  # the first thumbnail: "1. 0.873 · class"
    assert f"(cosine {score})" in after[2], (after, before)


def test_prompt_explorer_edit_changes_the_ranking_and_back_restores_it(server, browser):
    """Issue 21 in a real browser: moving the crop's box-size slider re-embeds the query with the edited prompt and
    changes the shown ranking and AP; "Back to the learned prompt" restores the learned prompt's."""
    import re

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rank = re.compile(r"^\d+\. #(\d+) · ")

    def shown() -> tuple[list[str], list[str]]:
        values = [m.text for m in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
                  if m.text.startswith("AP")]
        ranks = [c.text for c in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')
                 if rank.match(c.text)]
        return values, ranks

    def edited(state: tuple[list[str], list[str]]) -> tuple[str, list[str]]:
        values, ranks = state
        k = len(ranks) // 3
        return values[1].splitlines()[1], ranks[k:2 * k]  # the second row is the edited prompt's

    def settled(text: str, timeout: float = 240) -> None:
        """Until the page shows ``text`` and has no stale element left from the run before (a rerun greys the old
        ones out until it redraws them), then until it is stable."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            body = browser.find_element(By.TAG_NAME, "body").text
            if text in body and not browser.find_elements(By.CSS_SELECTOR, '[data-stale="true"]'):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the page never showed {text!r}")
        _wait_rendered(browser, "stImage", 3 * 9 + 5)

    browser.get(f"{server}/Prompt_explorer")
    settled("Edited prompt: learned")
    before = shown()
    assert len(before[0]) == 3 and len(before[1]) == 3 * 8
    # the slider's keyboard handle: a visually hidden range input inside its thumb (react-aria)
    thumb = browser.find_element(By.CSS_SELECTOR, 'input[type="range"][aria-label^="Box size"]')
    assert thumb.get_attribute("aria-valuetext") == "1.0"
    thumb.send_keys(Keys.LEFT, Keys.LEFT, Keys.LEFT, Keys.LEFT, Keys.LEFT)  # 1.0 -> 0.5
    settled("Edited prompt: scale=0.5")
    after = shown()
    SCREENS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENS / "prompt_explorer_edited.png"))
    assert thumb.get_attribute("aria-valuetext") == "0.5"
    assert edited(after) != edited(before)
    assert edited(after)[0] != edited(before)[0] and edited(after)[1] != edited(before)[1]  # AP and ranking
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button")
         if b.text.strip().endswith("Back to the learned prompt")).click()
    settled("Edited prompt: learned")
    assert shown() == before
    # the split-level half of the page (the sweep, stored or offered, and where the prompt helps and hurts)
    heading = next(h for h in browser.find_elements(By.CSS_SELECTOR, "h3") if h.text.startswith("Over the test split"))
    browser.execute_script("arguments[0].scrollIntoView();", heading)
    time.sleep(1)
    browser.save_screenshot(str(SCREENS / "prompt_explorer_split.png"))
