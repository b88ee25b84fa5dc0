"""Soak: N visitors walking every page of one server for D minutes, speaking Streamlit's own protocol (issue 28,
item 4). Does the server hold them: exceptions, page times, memory over time, and does it still answer?

Each visitor is one websocket session (``/_stcore/stream``) sending what the browser's JavaScript sends: a
``BackMsg`` ``rerun_script`` naming the page, then reading ``ForwardMsg``s until ``script_finished``; it fetches
the media the page refers to (its pictures) over HTTP, as a browser does, and goes on to the next page of the
sidebar's list, round and round, with ``--think`` seconds between pages. No browser: on a 2-core machine twenty
Chromium instances beside the server take the cores the server is measured on (bench/RESULTS.md, "Twenty
sessions"). While a visitor looks at a page it reruns the page's periodic fragments (the sidebar's job lines) at
the interval the server asks, as an open tab does. What it does not do: draw pages, run the browser's JavaScript
(so no widget is ever clicked: every page runs on its defaults), or keep the browser's message cache.

Measured (one JSON line at the end, a progress line a minute): page seconds (p50 / p95 / max, by page and all),
pages that raised an exception (the element Streamlit sends in place of a traceback, or an error the script
reported), page runs that did not finish within ``--timeout``; the server's RSS (its process and all children)
every 5 s, with the growth between the 10th and the last minute; ``/_stcore/health`` and the page shell ``/``
fetched every 2 s (bench_sessions.Prober).

    python bench/bench_soak.py --visitors 20 --minutes 30                        # the built-in demo
    python bench/bench_soak.py --visitors 20 --minutes 30 --cub ../shared/data/CUB_200_2011   # serving mode on CUB

``--cub`` serves ``cub/compact-frpt-288`` on that CUB copy in serving mode (``FRPT_SERVE=1``, a config with it as
the only checkpoint, no password): every visitor's default checkpoint; its test gallery should be stored first
(``python -m frpt embed --checkpoint assets/cub/compact-frpt-288 --dataset cub --root ...``), or the soak measures
the background job too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_sessions as bs  # noqa: E402 - Prober, RssSampler, percentiles, free_port, start/stop_server

PAGES = ("", "Prompt_explorer", "Warp_gallery", "Attributions", "Embedding_space", "Retrieval", "AB_retrieval",
         "Checkpoints", "Reproduction")  # the sidebar's order; "" is Home


class Visitor(threading.Thread):
    """One browser session without the browser: page after page until ``deadline``."""

    def __init__(self, k: int, base: str, deadline: float, think: float, timeout: float):
        super().__init__(daemon=True, name=f"visitor-{k}")
        self.k, self.base, self.deadline, self.think, self.timeout = k, base, deadline, think, timeout
        self.times: dict[str, list[float]] = defaultdict(list)
        self.exceptions: list[str] = []
        self.unfinished = 0
        self.disconnects = 0
        self.fragment_runs: list[float] = []  # seconds of each periodic fragment rerun (the sidebar's job lines)

    def run(self) -> None:
        step = self.k  # visitors start on different pages
        while time.time() < self.deadline:
            try:
                self._session(step)
            except Exception as exc:  # noqa: BLE001 - a dropped connection: counted, then a new session
                self.disconnects += 1
                self.exceptions.append(f"connection: {type(exc).__name__}: {exc}"[:300])
                time.sleep(2)
            step += len(PAGES)

    def _session(self, step: int) -> None:
        import websocket

        ws = websocket.create_connection(self.base.replace("http", "ws") + "/_stcore/stream",
                                         subprotocols=["streamlit"], timeout=self.timeout, origin=self.base)
        try:
            while time.time() < self.deadline:
                page = PAGES[step % len(PAGES)]
                step += 1
                t0 = time.perf_counter()
                reruns = self._run(ws, page)
                if reruns is None:
                    return  # no answer within --timeout: a new session (this one may still be running the page)
                self.times[page or "Home"].append(time.perf_counter() - t0)
                self._look(ws, page, reruns)
        finally:
            ws.close()

    def _run(self, ws, page: str, fragment: str = "") -> list[tuple[float, str]] | None:
        """One script run (the page, or one of its fragments), as the browser asks for it; the pictures it refers
        to are fetched. Returns the fragments the page asked to be rerun periodically, or None on a timeout."""
        import websocket
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        back = BackMsg()
        back.rerun_script.page_name = page
        back.rerun_script.query_string = ""
        if fragment:
            back.rerun_script.fragment_id = fragment
            back.rerun_script.is_auto_rerun = True
        ws.send_binary(back.SerializeToString())
        media: list[str] = []
        reruns: list[tuple[float, str]] = []
        while True:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                self.unfinished += 1
                return None
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            if kind == "delta":
                self._read_delta(msg.delta, page, media)
            elif kind == "page_not_found":
                self.exceptions.append(f"{page}: page not found")
            elif kind == "auto_rerun":
                reruns.append((msg.auto_rerun.interval, msg.auto_rerun.fragment_id))
            elif kind == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                break  # (a run cut short by st.rerun is followed by the rerun's own messages)
        for url in media:  # the pictures, as the browser fetches them
            with urllib.request.urlopen(self.base + url if url.startswith("/") else url, timeout=60) as reply:
                reply.read()
        return reruns

    def _look(self, ws, page: str, reruns: list[tuple[float, str]]) -> None:
        """The visitor looks at the page for ``think`` seconds; meanwhile the browser reruns the page's periodic
        fragments (the sidebar's job lines) at their intervals, as an open tab does."""
        end = time.time() + self.think
        every = {fragment: interval for interval, fragment in reruns if interval > 0}
        due = {fragment: time.time() + interval for fragment, interval in every.items()}
        while due:
            fragment, when = min(due.items(), key=lambda kv: kv[1])
            if when >= end:
                break
            time.sleep(max(0.0, when - time.time()))
            t0 = time.perf_counter()
            if self._run(ws, page, fragment) is None:
                return
            self.fragment_runs.append(time.perf_counter() - t0)
            due[fragment] = time.time() + every[fragment]
        time.sleep(max(0.0, end - time.time()))

    def _read_delta(self, delta, page: str, media: list[str]) -> None:
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        kind = element.WhichOneof("type")
        if kind == "exception":
            self.exceptions.append(f"{page or 'Home'}: {element.exception.type}: {element.exception.message}"[:300])
        elif kind == "imgs":
            media.extend(img.url for img in element.imgs.imgs if img.url)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--visitors", type=int, default=20)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--think", type=float, default=5.0, help="seconds a visitor looks at a page before the next")
    p.add_argument("--timeout", type=float, default=300, help="seconds one page run may take")
    p.add_argument("--cub", default=None, help="CUB_200_2011 folder: serve cub/compact-frpt-288 on it (serving mode)")
    p.add_argument("--log", default=None, help="keep the server's output in this file")
    args = p.parse_args()

    env_before = dict(os.environ)
    if args.cub:
        config = Path(tempfile.mkdtemp(prefix="frpt-soak-")) / "serve.toml"
        config.write_text(f'checkpoints = ["cub/compact-frpt-288"]\n[datasets]\ncub = "{Path(args.cub).resolve()}"\n')
        os.environ.update(FRPT_SERVE="1", FRPT_SERVE_CONFIG=str(config))
    port = bs.free_port()
    log = open(args.log or os.devnull, "wb")
    server = bs.start_server(port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline_health = time.time() + 120
        while time.time() < deadline_health:
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=5).read()
                break
            except OSError:
                time.sleep(1)
        rss = bs.RssSampler(server.pid, period=5.0)
        prober = bs.Prober(base)
        rss.start()
        prober.start()
        t0 = time.time()
        deadline = t0 + args.minutes * 60
        visitors = [Visitor(k, base, deadline, args.think, args.timeout) for k in range(args.visitors)]
        for v in visitors:
            v.start()
        minute = 0
        while any(v.is_alive() for v in visitors):
            time.sleep(5)
            if time.time() - t0 >= 60 * (minute + 1):
                minute += 1
                pages = sum(len(t) for v in visitors for t in v.times.values())
                print(f"minute {minute}: {pages} pages, {sum(len(v.exceptions) for v in visitors)} exceptions, "
                      f"RSS {rss.read():.0f} MiB", file=sys.stderr, flush=True)
            if time.time() > deadline + args.timeout + 60:
                break
        health = prober.stop()
        rss.stop()
    finally:
        bs.stop_server(server)
        log.close()
        os.environ.clear()
        os.environ.update(env_before)

    by_page: dict[str, list[float]] = defaultdict(list)
    for v in visitors:
        for page, times in v.times.items():
            by_page[page].extend(times)
    every = [t for times in by_page.values() for t in times]
    samples = rss.samples  # (seconds since the sampler started, MiB)

    def at(minute_: float) -> float | None:
        after = [m for s, m in samples if s >= minute_ * 60]
        return after[0] if after else None

    m10, last = at(10), (samples[-1][1] if samples else None)
    exceptions = [e for v in visitors for e in v.exceptions]
    result = {
        "bench": "soak", "dataset": "cub" if args.cub else "demo", "visitors": args.visitors,
        "minutes": args.minutes, "think_s": args.think, "pages": len(every), "page_s": bs.percentiles(every),
        "by_page": {k: bs.percentiles(v) for k, v in sorted(by_page.items())},
        "fragment_runs": bs.percentiles([t for v in visitors for t in v.fragment_runs]),
        "exceptions": len(exceptions), "first_exceptions": exceptions[:5],
        "unfinished": sum(v.unfinished for v in visitors), "disconnects": sum(v.disconnects for v in visitors),
        "rss_mib": {"start": samples[0][1] if samples else None, "minute_10": m10, "end": last,
                    "max": max((m for _, m in samples), default=None),
                    "growth_10_to_end_pct": round(100 * (last - m10) / m10, 1) if m10 and last else None},
        "health": health, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                   capture_output=True, text=True).stdout.strip(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
