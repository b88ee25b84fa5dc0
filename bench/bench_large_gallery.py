"""The Retrieval page's ranking on a gallery of a million rows (issue 10): load time, time per query, memory.

Writes a synthetic gallery file in the format ``frpt embed`` writes (clustered unit-ish vectors of width 1280 as
both the "before" and "after" embeddings, labels = cluster, ids like ImageFolder paths), then, in a fresh process,
reads it with :func:`frpt.gallery.load_gallery` (the vectors memory-mapped) and ranks ``--queries`` gallery rows
with :func:`frpt.ui.logic.rank_gallery`, the page's own call (exact cosine over every row with the gallery's row
norms computed once, the full ranking for AP and R@K). Prints one JSON line per measurement; memory is the process's anonymous (owned) and file-backed
(mapped gallery pages: shared page cache) resident set from /proc/self/status.

    python bench/bench_large_gallery.py --n 1000000 --workdir runs/large_gallery

``--app CHECKPOINT`` instead prepares the app for a browser check on a million *images*: an ImageFolder tree of
``--n`` test images (``--classes`` test classes plus as many one-image train classes; each image a symbolic link to
a CUB image of CUB class ``c % 200``, so a class's thumbnails show one species) and a copy of CHECKPOINT whose stored
test gallery for that folder holds the synthetic vectors (label = folder class): open the copy with the folder
dataset and the page ranks a million rows and shows their images. Listing the tree and writing the gallery are timed.

    python bench/bench_large_gallery.py --app assets/cub/compact-frpt --cub-root ../shared/data/CUB_200_2011 \
        --n 1000000 --workdir runs/large_gallery --browser   # or: FRPT_FOLDER_ROOT=... make app
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 2**20, 3)  # kB -> GB
    return fields


def write_gallery(path: Path, n: int, dim: int, classes: int, seed: int) -> dict[str, float]:
    """The gallery file, written as ``frpt embed`` assembles its shards (:func:`frpt.fileio.write_npz_blocks`
    over memory-mapped rows): the vectors go to a scratch .npy a block at a time, then into the archive, so the
    writer never owns the gallery (peak anonymous RSS reported)."""
    from frpt.fileio import write_npz_blocks

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    scratch = path.with_suffix(".scratch.npy")
    vectors = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 65_536):  # centre + noise of the centre's norm, a block at a time
        stop = min(start + 65_536, n)
        vectors[start:stop] = centres[labels[start:stop]] + rng.standard_normal((stop - start, dim), dtype=np.float32)
    vectors.flush()
    ids = np.array([f"class_{c:05d}/img_{i:08d}.jpg" for i, c in enumerate(labels)])
    members = {"before": [vectors], "after": [vectors], "labels": [labels], "ids": [ids],
               "classes": [np.array([f"class_{c:05d}" for c in range(classes)])], "skipped": [np.array([], dtype=str)],
               "indices": [np.arange(n)], "precision": [np.array("fp32")]}
    with open(path, "wb") as fh:
        write_npz_blocks(fh, members)
    del vectors
    scratch.unlink()
    return {"seconds": round(time.perf_counter() - started, 1), **{f"writer_{k}": v for k, v in rss().items()}}


def measure(path: Path, queries: int, k: int, map_points: int) -> None:
    from frpt.gallery import load_gallery
    from frpt.ui.logic import rank_gallery

    print(json.dumps({"bench": "start", **rss()}), flush=True)
    started = time.perf_counter()
    gallery = load_gallery(path)
    print(json.dumps({"bench": "load_gallery", "seconds": round(time.perf_counter() - started, 3),
                      "rows": len(gallery.ids), "mapped": isinstance(gallery.embeddings.after, np.memmap),
                      **rss()}), flush=True)
    started = time.perf_counter()
    gallery.after_norms  # noqa: B018 - once per gallery, kept with it (the app caches the Gallery object)
    print(json.dumps({"bench": "row norms (once per gallery)", "seconds": round(time.perf_counter() - started, 3),
                      **rss()}), flush=True)
    rows = np.random.default_rng(1).choice(len(gallery.ids), queries, replace=False)
    times = []
    for i, row in enumerate(rows):
        started = time.perf_counter()
        ranking = rank_gallery(gallery.embeddings.after[row], gallery.embeddings.after, gallery.embeddings.labels,
                               k, int(gallery.embeddings.labels[row]), exclude=int(row), norms=gallery.after_norms)
        times.append(time.perf_counter() - started)
        if i == 0:
            print(json.dumps({"bench": "first query (page cache as left by the write)", "seconds": round(times[0], 3),
                              "average_precision": ranking.average_precision, **rss()}), flush=True)
    print(json.dumps({"bench": "rank_gallery", "queries": queries, "k": k,
                      "median_seconds": round(float(np.median(times[1:])), 3),
                      "max_seconds": round(float(np.max(times[1:])), 3), **rss()}), flush=True)
    if map_points:  # the Embedding space page's nearest-neighbour colours: the map's points against every row
        from frpt.metrics import nearest_neighbour_hits
        from frpt.projection import subsample

        points = subsample(len(gallery.ids), map_points, 0)
        started = time.perf_counter()
        hits = nearest_neighbour_hits(gallery.embeddings.after, gallery.embeddings.labels, points)
        print(json.dumps({"bench": "nearest_neighbour_hits (map points)", "points": len(points),
                          "seconds": round(time.perf_counter() - started, 2), "hit_rate": round(float(hits.mean()), 4),
                          **rss()}), flush=True)


def _cub_images_by_class(cub_root: Path) -> dict[int, list[Path]]:
    names = dict(line.split() for line in (cub_root / "images.txt").read_text().splitlines() if line.strip())
    by_class: dict[int, list[Path]] = {}
    for line in (cub_root / "image_class_labels.txt").read_text().splitlines():
        if line.strip():
            image_id, cls = line.split()
            by_class.setdefault(int(cls) - 1, []).append((cub_root / "images" / names[image_id]).resolve())
    return by_class


def prepare_app(checkpoint: Path, cub_root: Path, workdir: Path, n: int, classes: int, seed: int) -> None:
    """The folder tree, the checkpoint copy and its stored gallery (see the module docstring)."""
    import shutil

    import torch

    from frpt.checkpoint import load_card, load_checkpoint
    from frpt.data.folder import build_folder
    from frpt.engine import Plan
    from frpt.evaluation import Embeddings
    from frpt.gallery import gallery_file, load_gallery, store_gallery

    folder, ckpt = workdir / "folder", workdir / "checkpoint"
    started = time.perf_counter()
    if not (folder / ".complete").is_file():
        by_class = _cub_images_by_class(cub_root)
        per_class = [n // classes + (c < n % classes) for c in range(classes)]
        for c in range(classes):
            images = by_class[c % len(by_class)]
            for split, count in (("a-train", 1), ("b-test", per_class[c])):
                d = folder / f"{split}-{c:05d}"
                d.mkdir(parents=True, exist_ok=True)
                for j in range(count):
                    link = d / f"{j:06d}.jpg"
                    if not link.is_symlink():
                        link.symlink_to(images[j % len(images)])
        (folder / ".complete").touch()
        print(json.dumps({"bench": "symlink tree", "images": n + classes,
                          "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    started = time.perf_counter()
    dataset = build_folder("test", folder)
    print(json.dumps({"bench": "build_folder (test split listed)", "images": len(dataset),
                      "seconds": round(time.perf_counter() - started, 1), **rss()}), flush=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.is_file():
            shutil.copy2(f, ckpt / f.name)
    card = load_card(ckpt)
    stored = load_gallery(gallery_file(card, dataset, folder))
    if stored is not None and len(stored.ids) == len(dataset):
        return  # prepared by an earlier run

    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        dim = int(model.embed(torch.zeros(1, 3, card["input_size"], card["input_size"])).shape[1])
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = np.array([y for _, y in dataset.samples], dtype=np.int64)
    scratch = workdir / "vectors.scratch.npy"
    vectors = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(labels), dim))
    for s in range(0, len(labels), 65_536):
        block = labels[s:s + 65_536]
        vectors[s:s + len(block)] = centres[block] + rng.standard_normal((len(block), dim), dtype=np.float32)
    vectors.flush()
    gallery = store_gallery(card, dataset, folder, Embeddings(vectors, vectors, labels, Plan("torch", "fp32")))
    del vectors
    scratch.unlink()
    print(json.dumps({"bench": "store_gallery", "rows": len(gallery.ids), "path": str(gallery.path),
                      "seconds": round(time.perf_counter() - started, 1), **rss()}), flush=True)


def browse(workdir: Path, n: int, timeout: float) -> None:
    """After ``--app``: a fresh ``streamlit run app.py`` and headless Chromium (bench/bench_sessions.py's helpers)
    open the Retrieval page, switch the sidebar to the checkpoint copy and the folder dataset as a user does, and
    time until the ranked thumbnails of the ``n``-image gallery are shown; then pick the last test image by number;
    then open the Embedding space page (its first visit fits the maps) and colour the maps by nearest-neighbour hit
    (each map point's neighbour among all ``n`` rows).
    Screenshots land in ``workdir``."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    import bench_sessions as bs

    folder, ckpt = (workdir / "folder").resolve(), (workdir / "checkpoint").resolve()
    os.environ["FRPT_FOLDER_ROOT"] = str(folder)  # the sidebar's default dataset folder (frpt.ui.state.default_root)
    port = bs.free_port()
    with open(workdir / "streamlit.log", "wb") as log:
        server = bs.start_server(port, log)
        driver = bs.new_driver()
        try:
            base = f"http://127.0.0.1:{port}"

            def timed(step: str, act, until=lambda state: True, page: str = "Retrieval") -> None:
                t0 = time.time()
                act()
                time.sleep(1)  # the rerun has begun: a fast poll could see the old page, not yet marked stale

                def fresh(state: dict) -> bool:  # and no element is still greyed out from the previous run
                    stale = driver.execute_script("return document.querySelectorAll('[data-stale=\"true\"]').length")
                    return until(state) and not stale

                seconds = bs.wait_rendered(driver, page, timeout, t0, fresh)
                shot = workdir / f"{page.lower()}-{step}.png"
                driver.save_screenshot(str(shot))
                print(json.dumps({"bench": f"browser: {step}", "seconds": round(seconds, 1),
                                  "exceptions": bs.exceptions(driver), "screenshot": shot.name}), flush=True)

            def sidebar(selector: str):
                found = []
                deadline = time.time() + timeout
                while not found and time.time() < deadline:
                    found = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="stSidebar"] {selector}')
                    time.sleep(0.5)
                return found

            def choose_folder_checkpoint() -> None:
                next(e for e in sidebar('[data-testid="stRadio"] label') if e.text.strip() == "Folder").click()
                sidebar('input[aria-label="Checkpoint folder"]')[0].send_keys(str(ckpt), Keys.ENTER)
                time.sleep(3)  # the rerun redraws the dataset picker on the card's own dataset (cub)
                box = next(b for b in sidebar('[data-testid="stSelectbox"]') if "Dataset" in b.text)
                (box.find_elements(By.CSS_SELECTOR, 'button[aria-haspopup="listbox"]')  # as bench_sessions opens one
                 or box.find_elements(By.CSS_SELECTOR, '[data-baseweb="select"]') or [box])[0].click()
                deadline = time.time() + 20
                while time.time() < deadline:
                    options = [o for o in driver.find_elements(By.CSS_SELECTOR, '[role="option"]')
                               if o.text == "folder"]
                    if options:
                        options[0].click()
                        return
                    time.sleep(0.2)
                raise TimeoutError("no 'folder' option in the dataset selectbox")

            def pick_last() -> None:
                field = driver.find_element(By.CSS_SELECTOR, 'input[aria-label^="Test image number"]')
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(str(n - 1), Keys.ENTER)

            timed("demo", lambda: driver.get(f"{base}/Retrieval"))
            timed(f"folder-{n}", choose_folder_checkpoint,
                  lambda state: f"{n:,} test images" in (state.get("caption") or ""))
            timed(f"image-{n - 1}", pick_last,
                  lambda state: state.get("count") and f"#{n - 1} · " in driver.page_source)
            # the maps (UMAP of 2,000 points, before and after the head) and their nearest-neighbour colours
            timed(f"{n}", lambda: bs.nav_to(driver, "Embedding_space", timeout), page="Embedding_space")

            def colour_by_neighbour() -> None:
                labels = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stRadio"] label')
                next(e for e in labels if e.text.strip() == "Nearest neighbour hit").click()

            timed(f"{n}-nn-colours", colour_by_neighbour, page="Embedding_space")
        finally:
            bs.close_drivers([driver])
            bs.stop_server(server)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--map-points", type=int, default=2000, help="Embedding space map size for the NN colours (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/large_gallery")
    p.add_argument("--app", type=Path, help="a checkpoint folder: prepare the app's million-image check instead")
    p.add_argument("--browser", action="store_true", help="with --app: open the Retrieval page on it in Chromium")
    p.add_argument("--timeout", type=float, default=900, help="--browser: seconds each step may take")
    p.add_argument("--cub-root", type=Path, default=REPO.parent / "shared/data/CUB_200_2011")
    p.add_argument("--measure-only", help=argparse.SUPPRESS)  # the fresh process: a gallery file to read
    args = p.parse_args(argv)
    if args.app:
        prepare_app(args.app, args.cub_root, Path(args.workdir), args.n, args.classes, args.seed)
        if args.browser:
            browse(Path(args.workdir), args.n, args.timeout)
        return 0
    if args.measure_only:
        measure(Path(args.measure_only), args.queries, args.k, args.map_points)
        return 0
    path = Path(args.workdir) / f"gallery-{args.n}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        written = write_gallery(path, args.n, args.dim, args.classes, args.seed)
        print(json.dumps({"bench": "write", "n": args.n, "dim": args.dim, **written,
                          "bytes": path.stat().st_size}), flush=True)
    # A fresh process, so its memory counts only what reading and ranking take.
    subprocess.run([sys.executable, __file__, "--measure-only", str(path), "--queries", str(args.queries),
                    "--k", str(args.k), "--map-points", str(args.map_points)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
