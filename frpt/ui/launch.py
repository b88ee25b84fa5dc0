"""``python -m frpt.ui.launch [streamlit options]``: the app server, with the test galleries of the checkpoints it
offers started before the first visitor opens a page (issue 27, item 4).

Streamlit runs a page's script only when a browser asks for it, so a server started with ``streamlit run`` would
begin embedding only once somebody picks a checkpoint. This launcher queues those jobs (:mod:`frpt.jobs`) in the
server's own process, the default checkpoint first, and then hands the process to Streamlit: the pages find the
jobs already running (the same process, the same queue) and show what is ready. ``make app`` and ``make serve``
start the app this way. Which jobs: in serving mode (``FRPT_SERVE=1``) the configured checkpoints on the configured
datasets; otherwise the shipped checkpoints on each dataset whose folder is set as ``FRPT_<NAME>_ROOT`` (e.g.
``FRPT_CUB_ROOT``), the best CUB checkpoint first. A split small enough to embed in a page gets no job.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import jobs
from ..checkpoint import load_card
from ..compare import trained_on
from ..data import build_dataset, build_transform
from ..demo import named_checkpoints
from ..errors import FRPTError
from ..gallery import gallery_file
from ..serve import active_config

REPO = Path(__file__).resolve().parents[2]
FIRST = "cub/compact-frpt-288"  # the best CUB row: a local server embeds its gallery first


def offered() -> list[tuple[str, str, str, str | None]]:
    """(title, checkpoint folder, dataset, root) of each gallery the server offers, in the order to embed them."""
    config = active_config()  # serving mode (FRPT_SERVE=1), else None
    if config is not None:
        pairs = [(c.name, str(c.path)) for c in config.checkpoints]  # the first is the default
        roots = dict(config.datasets)
    else:
        named = named_checkpoints()
        pairs = sorted(((n, str(p)) for n, p in named.items()), key=lambda np_: np_[0] != FIRST)
        roots = {}
        for _, path in pairs:
            name = trained_on(_card(path) or {})
            env = os.environ.get(f"FRPT_{(name or '').upper()}_ROOT", "").strip()
            if name and env:
                roots[name] = env
    out = []
    for title, path in pairs:
        name = trained_on(_card(path) or {})
        if name in roots:
            out.append((title, path, name, roots[name] or None))
    return out


def _card(path: str) -> dict | None:
    try:
        return load_card(path)
    except FRPTError:
        return None


def start_jobs() -> list[jobs.Job]:
    """Queue the offered galleries that are neither stored nor small; returns the jobs queued."""
    queued = []
    for title, path, name, root in offered():
        card = _card(path)
        try:
            ds = build_dataset(name, "test", root=root, transform=build_transform(card["input_size"], train=False))
        except FRPTError as exc:
            print(f"note: no gallery job for {title}: {exc}", file=sys.stderr)
            continue
        if len(ds) <= jobs.background_min() or gallery_file(card, ds, root).is_file():
            continue
        queued.append(jobs.queue().submit(jobs.gallery_job(path, card, ds, root, f"{title} · {name} gallery")))
    return queued


def main(argv: list[str] | None = None) -> int:
    """Queue the galleries, then run ``streamlit run app.py`` with ``argv`` in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for job in start_jobs():
        print(f"background job: {job.title} ({job.total:,} images)", file=sys.stderr)
    from streamlit.web import cli as streamlit_cli

    sys.argv = ["streamlit", "run", str(REPO / "app.py"), *argv]
    return streamlit_cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
