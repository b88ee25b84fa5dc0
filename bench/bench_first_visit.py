"""The app's first Embedding space visit of a shipped ``cub/`` checkpoint in headless Chromium, caches cleared.

A fresh ``streamlit run app.py`` with an empty compiled-model cache (``FRPT_CACHE_DIR``) and the checkpoint's
stored gallery moved aside (restored afterwards): Chromium opens the Embedding space page on the demo checkpoint,
then picks ``--checkpoint`` in the sidebar as a user does, and the time runs until both maps (UMAP before and after
the head) are drawn for the CUB test split. That visit embeds the split on the inference engine (frpt.engine),
fits the maps and colours them. Prints one JSON line per step; screenshots land in ``--workdir``.

    python bench/bench_first_visit.py --checkpoint cub/compact-frpt --root ../shared/data/CUB_200_2011
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="cub/compact-frpt", help="a shipped checkpoint's name in the sidebar")
    p.add_argument("--root", required=True, help="CUB_200_2011 folder")
    p.add_argument("--workdir", default="runs/first_visit")
    p.add_argument("--timeout", type=float, default=1200)
    args = p.parse_args()

    import bench_sessions as bs

    from frpt.demo import bundled_cub_checkpoints

    workdir = (ROOT / args.workdir).resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    stored = bundled_cub_checkpoints()[args.checkpoint] / "gallery"
    aside = workdir / "gallery-aside"
    if stored.exists():
        shutil.move(str(stored), str(aside))
    os.environ["FRPT_CACHE_DIR"] = str(workdir / "engine-cache")  # no compiled model yet
    os.environ["FRPT_CUB_ROOT"] = str(Path(args.root).resolve())
    port = bs.free_port()
    try:
        with open(workdir / "streamlit.log", "wb") as log:
            server = bs.start_server(port, log)
            driver = bs.new_driver()
            try:
                t0 = time.time()
                driver.get(f"http://127.0.0.1:{port}/Embedding_space")
                step(driver, workdir, "demo", bs.wait_rendered(driver, "Embedding_space", args.timeout, t0))
                t0 = time.time()
                bs.pick_checkpoint(driver, args.checkpoint, args.timeout)
                time.sleep(1)
                seconds = bs.wait_rendered(driver, "Embedding_space", args.timeout, t0,
                                           lambda state: "5,924 test images" in (state.get("caption") or "")
                                           and bs.shown_checkpoint(driver) == args.checkpoint)
                step(driver, workdir, "first-visit", seconds, checkpoint=args.checkpoint)
            finally:
                bs.close_drivers([driver])
                bs.stop_server(server)
    finally:
        shutil.rmtree(stored, ignore_errors=True)
        if aside.exists():
            shutil.move(str(aside), str(stored))
    return 0


def step(driver, workdir: Path, name: str, seconds: float, **extra) -> None:
    import bench_sessions as bs

    shot = workdir / f"embedding_space-{name}.png"
    driver.save_screenshot(str(shot))
    print(json.dumps({"bench": f"browser: {name}", "seconds": round(seconds, 1), **extra,
                      "exceptions": bs.exceptions(driver), "screenshot": str(shot.relative_to(ROOT))}), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
