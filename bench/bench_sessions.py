"""Concurrent users: N independent browser sessions (headless Chromium) on one `streamlit run app.py` server, each
on its own demo checkpoint and page; checks that no session sees another's choice and samples the server's memory.

    python bench/bench_sessions.py [--sessions 10] [--rounds 1] [--port 0] [--timeout 900] [--offset 0]
                                   [--pause 0] [--screenshot PNG] [--no-warmup] [--log FILE] [--client-nice 0]

Session i opens page ``PAGES[i % 9]`` and picks demo checkpoint ``DEMOS[(i + i // 9) % 3]`` (i shifted by
--offset) through the sidebar's "Demo checkpoint" selectbox (the Reproduction page has no checkpoint picker: that
session picks on Home and then follows the sidebar link). All sessions start together. After every session has
made its choice, each one re-reads its selectbox and the sidebar's checkpoint caption (``preset/variant on
backbone``), then reruns inside the same session (sidebar link to another page and back; a JS marker proves the tab
never reloaded) and reads them again. Times: ``open_s`` first render of the page as opened, ``pick_s`` from the
click on the option to the page rendered on the new checkpoint, ``render_s`` their sum.

Before the sessions start, one tab visits Home and closes (--no-warmup skips it): Streamlit's process-wide MPA
flag starts True when a pages/ folder exists and only st.navigation (in app.py) clears it, so on a fresh server a
tab that first opens a page URL runs that page file directly with the pages/-folder navigation ("app" entry, no
sections); every tab's navigation is checked for that ("router_ok").

The server's RSS (its process and all descendants, from /proc; psutil is not needed) is sampled every 0.5 s, and
``/_stcore/health`` and the page shell are fetched every 2 s while the sessions run (does the server still answer
within a couple of seconds while its visitors compute?).
Prints a readable summary and then one JSON line. Needs chromium + chromedriver (``make browser``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEMOS = ("frpt", "no-cah", "pt")
TITLES = {"Home": "Home", "Prompt_explorer": "Prompt explorer", "Warp_gallery": "Warp gallery",
          "Attributions": "Attributions", "Embedding_space": "Embedding space", "Retrieval": "Retrieval",
          "AB_retrieval": "A/B retrieval", "Checkpoints": "Checkpoints", "Reproduction": "Reproduction"}
# page -> (url path, element proving the main content rendered, how many, has the checkpoint picker); nav order
PAGES = {
    "Home": ("", "stTable", 1, True),
    "Prompt_explorer": ("Prompt_explorer", "stImage", 1, True),
    "Warp_gallery": ("Warp_gallery", "stHeading", 1, True),
    "Attributions": ("Attributions", "stImage", 3, True),
    "Embedding_space": ("Embedding_space", "stPlotlyChart", 2, True),
    "Retrieval": ("Retrieval", "stImage", 11, True),
    "AB_retrieval": ("AB_retrieval", "stHeading", 1, True),
    "Checkpoints": ("Checkpoints", "stTable", 1, True),
    "Reproduction": ("Reproduction", "stPlotlyChart", 1, False),
}
POLL = 1.0      # s between render polls (one JS round trip each)
STABLE = 3      # polls with an unchanged, idle page (~2 s) before a page counts as rendered


# --------------------------------------------------------------------------------------------------- memory


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Prober(threading.Thread):
    """Whether the server stays responsive while visitors compute (issue 28, item 4): every ``period`` s, the time
    of a GET of ``/_stcore/health`` and of the page shell ``/`` (the HTML a new tab loads first)."""

    def __init__(self, base: str, period: float = 2.0):
        super().__init__(daemon=True)
        self.base, self.period = base, period
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's, before any --client-nice
        self.times: dict[str, list[float]] = {"health": [], "shell": []}
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import urllib.request

        try:  # at the server's priority, not the browsers' (--client-nice): it stands for a visitor elsewhere
            os.setpriority(os.PRIO_PROCESS, 0, self.nice)
        except OSError:
            pass
        while not self._halt.is_set():
            for name, path in (("health", "/_stcore/health"), ("shell", "/")):
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(self.base + path, timeout=30) as reply:
                        reply.read()
                    self.times[name].append(time.perf_counter() - t0)
                except Exception:  # noqa: BLE001 - counted: a probe that got no answer within 30 s
                    self.failures += 1
            self._halt.wait(self.period)

    def stop(self) -> dict:
        self._halt.set()
        self.join(timeout=40)
        return {name: percentiles(values) for name, values in self.times.items()} | {"failures": self.failures}


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50 / p95 / max (seconds) and the count of ``values``."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {"n": len(v), "p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3),
            "max": round(float(v.max()), 3)}


class RssSampler(threading.Thread):
    """RSS of ``pid`` plus its descendants every ``period`` s (MiB)."""

    def __init__(self, pid: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples: list[tuple[float, float]] = []
        self.hwm_mib = 0.0
        self._halt = threading.Event()

    def read(self) -> float:
        try:
            import psutil  # optional

            proc = psutil.Process(self.pid)
            procs = [proc, *proc.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except ImportError:
            return sum(_status_kb(p, "VmRSS") for p in _descendants(self.pid)) / 1024
        except Exception:
            return 0.0

    def run(self) -> None:
        t0 = time.time()
        while not self._halt.is_set():
            self.samples.append((time.time() - t0, self.read()))
            self.hwm_mib = max(self.hwm_mib, _status_kb(self.pid, "VmHWM") / 1024)
            self._halt.wait(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    @property
    def peak(self) -> float:
        return max((r for _, r in self.samples), default=0.0)

    @property
    def last(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


class Renicer(threading.Thread):
    """Every ``period`` s, put every thread under ``pid`` back at this script's niceness at least: Chromium raises
    its own threads' priority (nice -8 as root), which would let the browsers crowd out other work on a shared
    machine despite `nice -n 10`."""

    def __init__(self, pid: int, period: float = 2.0, spare: int | None = None):
        super().__init__(daemon=True)
        self.pid, self.period, self.nice = pid, period, os.getpriority(os.PRIO_PROCESS, 0)
        self.spare = spare  # a child whose process tree keeps its own priority (the app server)
        self.reniced = 0
        self._halt = threading.Event()

    def sweep(self) -> None:
        kept = set(_descendants(self.spare)) if self.spare is not None else set()
        for proc in _descendants(self.pid)[1:]:
            if proc in kept:
                continue
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{proc}/task")]
            except OSError:
                continue
            for tid in tids:
                try:
                    if os.getpriority(os.PRIO_PROCESS, tid) < self.nice:
                        os.setpriority(os.PRIO_PROCESS, tid, self.nice)
                        self.reniced += 1
                except OSError:
                    pass

    def run(self) -> None:
        while not self._halt.wait(self.period):
            self.sweep()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


# --------------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("streamlit did not start within 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------- browser


def new_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    opts.page_load_strategy = "none"  # get() returns at once; the polls below decide when a page is there
    profile = tempfile.mkdtemp(prefix="frpt-sessions-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--mute-audio", f"--user-data-dir={profile}", "--window-size=1500,1800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.command_executor._client_config.timeout = 600  # a loaded 2-core machine answers slowly
    driver._frpt_profile = profile
    return driver


def close_drivers(drivers: list, grace: float = 60) -> None:
    """Quit every driver (in parallel, at most ``grace`` s), then end what is left of each chromedriver's process
    tree by its pid (a renderer stuck under load can make quit() hang)."""
    live = [d for d in drivers if d is not None]
    pids = {}
    for d in live:
        try:
            pids[id(d)] = _descendants(d.service.process.pid)
        except Exception:  # noqa: BLE001
            pids[id(d)] = []
    quitters = [threading.Thread(target=lambda d=d: d.quit(), daemon=True) for d in live]
    for t in quitters:
        t.start()
    deadline = time.time() + grace
    for t in quitters:
        t.join(timeout=max(0.0, deadline - time.time()))
    for d in live:
        for pid in reversed(pids[id(d)]):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            d.service.process.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(getattr(d, "_frpt_profile", ""), ignore_errors=True)


# One round trip per poll: everything the waits and checks read from a tab.
_STATE_JS = """
const q = s => document.querySelectorAll(s);
const status = Array.from(q('[data-testid="stStatusWidget"]')).map(e => e.innerText).join(' ');
const field = document.querySelector('[data-testid="stSidebar"] input[aria-label="Demo checkpoint"]');
const caps = q('[data-testid="stSidebar"] [data-testid="stCaptionContainer"]');
return {
  busy: /Running|Stop/.test(status) || q('[data-testid="stSpinner"], [data-testid="stProgress"]').length > 0,
  found: q('[data-testid="' + arguments[0] + '"]').length,
  count: q('[data-testid="stElementContainer"]').length,
  exc: Array.from(q('[data-testid="stException"]')).map(e => e.innerText.slice(0, 800)),
  shown: field ? field.value.trim() : null,
  caption: caps.length ? caps[caps.length - 1].innerText.trim() : '',
  session: window.__frpt_session === undefined ? null : window.__frpt_session,
  title: document.title,
  // MPA v1 fallback (see --no-warmup): the nav lists the main script as "app" and has no section headers
  router: q('[data-testid="stNavSectionHeader"]').length > 0 &&
          !Array.from(q('[data-testid="stSidebarNav"] a')).some(a => a.innerText.trim().split('\\n').pop() === 'app'),
};
"""


def tab_state(driver, testid: str = "stElementContainer") -> dict:
    return driver.execute_script(_STATE_JS, testid) or {}


def _css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def exceptions(driver) -> list[str]:
    return list(tab_state(driver).get("exc") or [])


def _titled(title: str, page: str) -> bool:
    return title == TITLES[page] or title.startswith(TITLES[page] + " ·")


def wait_rendered(driver, page: str, timeout: float, t0: float, until=lambda state: True) -> float:
    """Seconds from ``t0`` until the tab shows ``page`` (its title), the script has stopped, the page's main
    elements exist, ``until(state)`` holds and the page stays unchanged for STABLE polls (the stable streak's start
    is what counts). An exception block ends the wait at once (the caller reports it)."""
    from selenium.common.exceptions import WebDriverException

    _, testid, minimum, _ = PAGES[page]
    deadline, streak, start, last, state = time.time() + timeout, 0, None, None, {}
    while time.time() < deadline:
        try:
            state = tab_state(driver, testid)
            if state.get("exc"):
                return time.time() - t0
            count = state.get("count")
            ok = (not state.get("busy") and state.get("found", 0) >= minimum and until(state)
                  and _titled(state.get("title") or "", page))
        except WebDriverException:
            ok, count = False, None
        if ok and count == last and streak:
            streak += 1
        else:
            streak, start = (1, time.time()) if ok else (0, None)
        last = count
        if streak >= STABLE:
            return start - t0
        time.sleep(POLL)
    seen = {k: state.get(k) for k in ("title", "busy", "found", "count", "shown")}
    raise TimeoutError(f"{page} did not finish rendering in {timeout:.0f} s ({testid} >= {minimum}); last: {seen}")


def _picker(driver):
    for box in _css(driver, '[data-testid="stSidebar"] [data-testid="stSelectbox"]'):
        if box.find_elements("css selector", 'input[aria-label="Demo checkpoint"]') or "Demo checkpoint" in box.text:
            return box
    return None


def shown_checkpoint(driver) -> str | None:
    """The value the sidebar's "Demo checkpoint" selectbox displays (None when it is not drawn)."""
    return tab_state(driver).get("shown")


def sidebar_caption(driver) -> str:
    return tab_state(driver).get("caption") or ""


def pick_checkpoint(driver, name: str, timeout: float) -> None:
    """Open the "Demo checkpoint" selectbox and click the option ``name``, as a user does."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            box = _picker(driver)
            if box is not None:
                if shown_checkpoint(driver) == name:
                    return
                target = (box.find_elements("css selector", 'button[aria-haspopup="listbox"]')
                          or box.find_elements("css selector", '[data-baseweb="select"]') or [box])
                target[0].click()
                t_open = time.time()
                while time.time() - t_open < 10:
                    options = [o for o in _css(driver, '[role="option"]') if o.text.strip() == name]
                    if options:
                        options[0].click()
                        return
                    time.sleep(0.2)
        except WebDriverException:
            pass
        time.sleep(POLL)
    raise TimeoutError(f"could not pick {name!r} in the Demo checkpoint selectbox")


def nav_to(driver, title_path: str, timeout: float) -> None:
    """Follow the sidebar navigation link to ``title_path`` (client-side: the same Streamlit session)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for link in _css(driver, '[data-testid="stSidebarNav"] a[data-testid="stSidebarNavLink"]'):
                if urlparse(link.get_attribute("href") or "").path.strip("/") == title_path:
                    link.click()
                    return
        except WebDriverException:
            pass
        time.sleep(POLL)
    raise TimeoutError(f"no sidebar link to /{title_path}")


# --------------------------------------------------------------------------------------------------- sessions


class Session:
    def __init__(self, index: int, page: str, demo: str, expect_caption: str):
        self.index, self.page, self.demo, self.expect_caption = index, page, demo, expect_caption
        self.driver = None
        self.step = "start"
        self.result: dict = {"session": index, "page": page, "checkpoint": demo, "exceptions": []}

    def _note_exceptions(self, where: str) -> None:
        for text in exceptions(self.driver):
            entry = f"{where}: {text}"
            if entry not in self.result["exceptions"]:
                self.result["exceptions"].append(entry)

    def _read(self, tag: str) -> None:
        state = tab_state(self.driver)
        self.result[f"shown_{tag}"] = state.get("shown")
        self.result[f"caption_{tag}"] = state.get("caption") or ""
        self.result[f"router_{tag}"] = state.get("router")

    def phase_choose(self, base: str, timeout: float) -> None:
        path, _, _, has_picker = PAGES[self.page]
        entry = self.page if has_picker else "Home"  # Reproduction draws no checkpoint picker
        d = self.driver
        self.step = f"open {entry}"
        t0 = time.time()
        d.get(f"{base}/{PAGES[entry][0]}")
        # first view with the session's default checkpoint
        self.result["open_s"] = round(wait_rendered(d, entry, timeout, t0), 2)
        d.execute_script(f"window.__frpt_session = {self.index};")  # survives only while the tab never reloads
        self._note_exceptions("open")

        def shown_ok(state: dict) -> bool:
            return state.get("shown") == self.demo and (state.get("caption") or "").startswith(self.expect_caption)

        self.step = f"pick {self.demo} on {entry}"
        t1 = time.time()
        pick_checkpoint(d, self.demo, timeout)
        pick_s = wait_rendered(d, entry, timeout, t1, shown_ok)
        if not has_picker:
            self._note_exceptions("after pick")
            self.step = f"link to {self.page}"
            t2 = time.time()
            nav_to(d, path, timeout)
            pick_s = wait_rendered(d, self.page, timeout, t2)
        self.result["pick_s"] = round(pick_s, 2)
        self.result["render_s"] = round(self.result["open_s"] + self.result["pick_s"], 2)
        self._note_exceptions("after pick")

    def phase_check(self, timeout: float) -> None:
        """After everyone has chosen: re-read, then rerun in the same session (away and back) and re-read."""
        path, _, _, has_picker = PAGES[self.page]
        d = self.driver
        self.step = "re-read"
        if not has_picker:  # go where the picker is drawn
            nav_to(d, "", timeout)
            wait_rendered(d, "Home", timeout, time.time())
        self._read("after_all")
        away = "Checkpoints" if self.page in ("Home", "Reproduction") else "Home"
        self.step = f"rerun on {away}"
        nav_to(d, PAGES[away][0], timeout)
        wait_rendered(d, away, timeout, time.time())
        self._read("after_rerun")
        self._note_exceptions("rerun")
        self.step = f"back to {self.page}"
        t = time.time()
        nav_to(d, path, timeout)
        self.result["rerender_s"] = round(wait_rendered(d, self.page, timeout, t), 2)
        self._note_exceptions("back on page")
        self.result["same_tab"] = d.execute_script("return window.__frpt_session;") == self.index
        ok = all(self.result.get(f"shown_{t}") == self.demo and
                 (self.result.get(f"caption_{t}") or "").startswith(self.expect_caption)
                 for t in ("after_all", "after_rerun"))
        self.result["leak_ok"] = bool(ok and self.result["same_tab"])


def run_sessions(base: str, n: int, timeout: float, sampler: RssSampler, drivers: list,
                 offset: int = 0) -> list[dict]:
    """Run ``n`` sessions; ``drivers`` (the caller's list, so it can always close them) receives the browsers."""
    from frpt.checkpoint import load_card
    from frpt.demo import named_checkpoints

    demos = named_checkpoints()
    missing = [d for d in DEMOS if d not in demos]
    if missing:
        raise SystemExit(f"demo checkpoints missing: {missing} (python -m frpt.demo --rebuild)")
    captions = {}
    for name in DEMOS:
        card = load_card(str(demos[name]))
        captions[name] = f"{card.get('preset')}/{card.get('variant')} on {card['backbone'].get('name')}"
    pages = list(PAGES)
    sessions = []
    for i in range(n):
        slot = i + offset
        demo = DEMOS[(slot + slot // len(pages)) % len(DEMOS)]
        sessions.append(Session(i, pages[slot % len(pages)], demo, captions[demo]))

    drivers[:] = [None] * n

    def make(i):
        try:
            drivers[i] = new_driver()
        except Exception as exc:  # noqa: BLE001
            sessions[i].result["error"] = f"driver: {exc!r}"[:400]

    makers = [threading.Thread(target=make, args=(i,)) for i in range(n)]
    for t in makers:
        t.start()
    for t in makers:
        t.join()
    for s, d in zip(sessions, drivers):
        s.driver = d

    chosen = threading.Barrier(n)
    t_go = time.time()

    def say(s: Session, what: str) -> None:
        print(f"[{time.time() - t_go:7.1f} s] #{s.index} {s.page}/{s.demo}: {what}", file=sys.stderr, flush=True)

    def work(s: Session):
        try:
            if s.driver is None:
                raise RuntimeError(s.result.get("error", "no driver"))
            s.result["start_rss_mib"] = round(sampler.last, 1)
            s.phase_choose(base, timeout)
            say(s, f"chosen (open {s.result['open_s']} s, pick {s.result['pick_s']} s)")
        except Exception as exc:  # noqa: BLE001
            s.result["error"] = f"choose ({s.step}): {type(exc).__name__}: {exc}"[:700]
            say(s, s.result["error"])
            try:
                s._note_exceptions("on error")
            except Exception:  # noqa: BLE001
                pass
        try:
            chosen.wait(timeout=timeout * 2)
        except threading.BrokenBarrierError:
            pass
        if "error" in s.result:
            s.result["leak_ok"] = None
            return
        try:
            s.phase_check(timeout)
            say(s, f"checked (leak_ok {s.result['leak_ok']})")
        except Exception as exc:  # noqa: BLE001
            s.result["error"] = f"check ({s.step}): {type(exc).__name__}: {exc}"[:700]
            s.result.setdefault("leak_ok", None)

    workers = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return [s.result for s in sessions]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--timeout", type=float, default=900, help="seconds one page may take to render")
    p.add_argument("--offset", type=int, default=0, help="start the (page, checkpoint) assignment at this slot")
    p.add_argument("--screenshot", default=str(ROOT / "runs" / "shots" / "sessions_tab.png"),
                   help="screenshot of one tab at the end ('' for none)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the N sessions this many times (new tabs, same server): a flat peak = bounded caches")
    p.add_argument("--pause", type=float, default=0,
                   help="seconds between rounds with no tab open (Streamlit keeps a disconnected session for "
                        "server.disconnectedSessionTTL, 120 s by default)")
    p.add_argument("--log", default=None, help="keep the server's output in this file")
    p.add_argument("--client-nice", type=int, default=0,
                   help="run the browsers this much nicer than the server (e.g. 19): on one machine they then yield "
                        "the CPU to it, which a server whose visitors browse from elsewhere would have")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the one visit to Home before the sessions start (on a fresh server, tabs that open a "
                        "page URL before any session ran app.py get Streamlit's pages/-folder navigation)")
    args = p.parse_args()
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        raise SystemExit("chromium/chromedriver absent (make browser)")

    port = args.port or free_port()
    log = open(args.log, "w+b") if args.log else tempfile.TemporaryFile()
    server = start_server(port, log)
    prober = Prober(f"http://127.0.0.1:{port}")  # made before --client-nice: it keeps the server's priority
    if args.client_nice:  # this thread, and every browser started after it (the Renicer holds them there)
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + args.client_nice)
    sampler = RssSampler(server.pid)
    sampler.start()
    renicer = Renicer(os.getpid(), spare=server.pid)
    renicer.start()
    drivers: list = []
    warm: list = []
    rounds: list[dict] = []
    warmup_s = None
    t_start = time.time()
    try:
        time.sleep(1.0)
        idle_rss = sampler.read()
        if not args.no_warmup:  # one visitor on Home first: app.py's st.navigation then owns the routing
            warm.append(new_driver())
            t0 = time.time()
            warm[0].get(f"http://127.0.0.1:{port}/")
            warmup_s = round(wait_rendered(warm[0], "Home", args.timeout, t0), 2)
            close_drivers(warm)
            warm.clear()
            print(f"warm-up: Home rendered in {warmup_s} s", file=sys.stderr, flush=True)
        warm_rss = sampler.read()
        prober.start()
        results: list[dict] = []
        for k in range(args.rounds):  # later rounds: new tabs, same server and caches (is memory flat?)
            if k:
                close_drivers(drivers)
                drivers.clear()
                time.sleep(max(2.0, args.pause))
            i0 = len(sampler.samples)
            rss_before = sampler.read()
            res = run_sessions(f"http://127.0.0.1:{port}", args.sessions, args.timeout, sampler, drivers,
                               args.offset)
            for r in res:
                r["round"] = k
            results += res
            timed_k = [r for r in res if "render_s" in r]
            peak_k = max((m for _, m in sampler.samples[i0:]), default=0.0)
            rounds.append({"round": k, "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak_k, 1),
                           "end_rss_mib": round(sampler.last, 1),
                           "slowest_render_s": max((r["render_s"] for r in timed_k), default=None),
                           "leak_ok": all(r.get("leak_ok") is True for r in res)})
            print(f"round {k}: {rounds[-1]}", file=sys.stderr, flush=True)
        wall = time.time() - t_start
        if args.screenshot and drivers:
            shot = Path(args.screenshot)
            shot.parent.mkdir(parents=True, exist_ok=True)
            pick = next((d for r, d in zip(results, drivers) if d is not None and r["page"] == "Retrieval"), None)
            pick = pick or next((d for d in drivers if d is not None), None)
            if pick is not None:
                try:
                    pick.save_screenshot(str(shot))
                except Exception as exc:  # noqa: BLE001
                    print(f"screenshot failed: {exc!r}", file=sys.stderr)
        time.sleep(1.0)
    finally:
        try:
            close_drivers(drivers + warm)
        except Exception as exc:  # noqa: BLE001
            print(f"closing the browsers: {exc!r}", file=sys.stderr)
        server_alive = server.poll() is None
        probes = prober.stop() if prober.is_alive() else {}
        renicer.stop()
        try:
            sampler.stop()
        finally:
            stop_server(server)
        log.seek(0)
        server_log = log.read().decode(errors="replace")
        log.close()

    timed = [r for r in results if "render_s" in r]
    slowest = max(timed, key=lambda r: r["render_s"], default=None)
    per_page: dict[str, float] = {}
    for r in timed:
        per_page[r["page"]] = max(per_page.get(r["page"], 0.0), r["render_s"])
    tracebacks = server_log.count("Traceback")
    summary = {
        "sessions": args.sessions,
        "wall_s": round(wall, 1),
        "idle_rss_mib": round(idle_rss, 1),
        "warmup_s": warmup_s,
        "after_warmup_rss_mib": round(warm_rss, 1),
        "peak_rss_mib": round(sampler.peak, 1),
        "rounds": rounds,
        "end_rss_mib": round(sampler.last, 1),
        "vmhwm_mib": round(sampler.hwm_mib, 1),
        "rss_samples": len(sampler.samples),
        "slowest": None if slowest is None else {k: slowest[k] for k in ("page", "checkpoint", "render_s")},
        "slowest_after_pick": None if not timed else
        {k: max(timed, key=lambda r: r["pick_s"])[k] for k in ("page", "checkpoint", "pick_s")},
        "render_s_by_page": per_page,
        "page_times_s": {what: percentiles([r[what] for r in timed if what in r]) for what in
                         ("open_s", "pick_s", "rerender_s", "render_s")},
        "responsive_s": probes,
        "leak_ok": all(r.get("leak_ok") is True for r in results),
        "router_ok": all(r.get("router_after_all") is True and r.get("router_after_rerun") is True
                         for r in results),
        "errors": {r["session"]: r["error"] for r in results if "error" in r},
        "exceptions": {r["session"]: r["exceptions"] for r in results if r["exceptions"]},
        "server_alive_at_end": server_alive,
        "server_log_tracebacks": tracebacks,
        "threads_reniced": renicer.reniced,
        "per_session": results,
    }
    print(f"{args.sessions} sessions, wall {summary['wall_s']} s (warm-up {warmup_s} s); server RSS idle "
          f"{summary['idle_rss_mib']} MiB, after warm-up {summary['after_warmup_rss_mib']} MiB, "
          f"peak {summary['peak_rss_mib']} MiB, end {summary['end_rss_mib']} MiB (VmHWM {summary['vmhwm_mib']})")
    for r in results:
        print(f"  r{r['round']} #{r['session']:2d} {r['page']:16s} {r['checkpoint']:7s} "
              f"open {r.get('open_s', '-')!s:>7} s  "
              f"pick {r.get('pick_s', '-')!s:>7} s  rerender {r.get('rerender_s', '-')!s:>6} s  "
              f"shown {r.get('shown_after_all')}/{r.get('shown_after_rerun')}  leak_ok {r.get('leak_ok')}"
              + (f"  ERROR {r['error']}" if "error" in r else "")
              + (f"  EXCEPTIONS {len(r['exceptions'])}" if r["exceptions"] else ""))
    print(f"page times (p50 / p95 / max s): " + "; ".join(
        f"{k} {v['p50']} / {v['p95']} / {v['max']}" for k, v in summary["page_times_s"].items() if v["n"]))
    if probes:
        print(f"while they ran: /_stcore/health p50 {probes['health']['p50']} s, p95 {probes['health']['p95']} s, "
              f"max {probes['health']['max']} s; page shell p95 {probes['shell']['p95']} s, max "
              f"{probes['shell']['max']} s; {probes['failures']} probes unanswered within 30 s")
    if slowest:
        print(f"slowest page: {slowest['page']} ({slowest['checkpoint']}) {slowest['render_s']} s; "
              f"leak check: {'passed' if summary['leak_ok'] else 'FAILED'}; "
              f"st.navigation router in every tab: {summary['router_ok']}; "
              f"server tracebacks in log: {tracebacks}")
    if tracebacks:
        idx = server_log.find("Traceback")
        print("first server traceback:\n" + server_log[idx: idx + 2000])
    print(json.dumps(summary))
    if not summary["leak_ok"] or summary["errors"] or summary["exceptions"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
