"""Pack CUB-200-2011 into a few WebP zip chunks small enough to travel to a remote (GPU) machine, and unpack them.

The GPU machine this project is sometimes lent takes at most 64 MiB of files per call, and CUB's 11,788 JPEGs
(shorter side 224 px) weigh 195 MiB. Re-encoded as WebP (quality 65 by default) they weigh ~81 MiB: two chunks,
sent in two calls. Each image keeps its size, so bounding_boxes.txt stays valid; images.txt is rewritten to the
``.webp`` names. The re-encoding is lossy: bench/RESULTS.md records the PT row on both copies so a reader can tell
the codec's share from training's.

    python bench/pack_cub.py pack --root ../shared/data/CUB_200_2011 --out .gpu --chunks 36 48
    python bench/pack_cub.py unpack --out /tmp/cub .gpu/cub-0.zip .gpu/cub-1.zip   # there

``--chunks`` gives each chunk's size in MiB (the last takes the rest); metadata files travel in the first.
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

METADATA = ("images.txt", "classes.txt", "image_class_labels.txt", "bounding_boxes.txt")


def _webp(args: tuple[str, int]) -> bytes:
    from PIL import Image

    path, quality = args
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.convert("RGB").save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue()




def pack(root: Path, out: Path, chunks_mib: list[float], quality: int, workers: int) -> list[Path]:
    lines = [ln.split(maxsplit=1) for ln in (root / "images.txt").read_text().splitlines() if ln.strip()]
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"cub-{k}.zip" for k in range(len(chunks_mib))]
    limits = [m * 2**20 for m in chunks_mib[:-1]] + [float("inf")]
    k, size = 0, 0
    chunk = zipfile.ZipFile(paths[0], "w", zipfile.ZIP_STORED)  # WebP is compressed already
    renamed = "".join(f"{i} {Path(rel).with_suffix('.webp').as_posix()}\n" for i, rel in lines)
    chunk.writestr("images.txt", renamed)
    for name in METADATA[1:]:
        chunk.write(root / name, name)
    with ProcessPoolExecutor(workers) as pool:
        jobs = ((str(root / "images" / rel), quality) for _, rel in lines)
        for (_, rel), data in zip(lines, pool.map(_webp, jobs, chunksize=64)):
            if size + len(data) > limits[k]:
                chunk.close()
                k, size = k + 1, 0
                chunk = zipfile.ZipFile(paths[k], "w", zipfile.ZIP_STORED)
            chunk.writestr(f"images/{Path(rel).with_suffix('.webp').as_posix()}", data)
            size += len(data)
    chunk.close()
    return paths[:k + 1]


def unpack(out: Path, chunks: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in chunks:
        with zipfile.ZipFile(path) as chunk:
            chunk.extractall(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--root", default="../shared/data/CUB_200_2011")
    a.add_argument("--out", default=".gpu")
    a.add_argument("--chunks", type=float, nargs="+", default=[36.0, 48.0], help="MiB per chunk (last: the rest)")
    a.add_argument("--quality", type=int, default=65)
    a.add_argument("--workers", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("--out", required=True)
    u.add_argument("chunks", nargs="+", type=Path)
    args = p.parse_args(argv)
    if args.command == "pack":
        for path in pack(Path(args.root), Path(args.out), args.chunks, args.quality, args.workers):
            print(f"{path} {path.stat().st_size / 2**20:.1f} MiB")
    else:
        unpack(Path(args.out), args.chunks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
