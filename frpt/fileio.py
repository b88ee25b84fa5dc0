"""Crash-safe file writes (a temp file in the same folder, fsync, then an atomic rename), and memory-mapped reads
of ``np.savez`` archives."""
from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# mkstemp creates 0600 files; the renamed file gets the mode a plain open() would give (0666 minus the umask),
# so a checkpoint stays readable by the app or a colleague. Read once, at import (os.umask is process-global).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path``; a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable (power loss, not just a killed process)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    atomic_write(path, write)


def remove_stale_temps(folder: str | os.PathLike) -> None:
    """Delete temp files a killed process left behind: ours (``.<name>.<random>.tmp``) and those of safetensors'
    own ``save_file`` (``.tmp`` + 6 random characters), left by runs from before checkpoint tensors were
    serialised in memory."""
    folder = Path(folder)
    for tmp in (*folder.glob(".*.tmp"), *folder.glob(".tmp??????")):
        tmp.unlink(missing_ok=True)


def npz_memmap(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read-only memory maps of arrays ``names`` of an uncompressed ``np.savez`` archive (``np.load`` maps only a
    bare .npy). Each member of such an archive is a .npy file stored as is, so its data sits at a fixed offset of
    the archive: the page cache then holds one copy for every process and session reading it, and a gallery of a
    million rows costs no RAM until rows are touched. Raises ValueError for a compressed member or an object
    array; the caller reads those with ``np.load``."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        for name in names:
            info = archive.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{name} is compressed in {path}")
            fh.seek(info.header_offset)
            local = fh.read(30)  # the local file header: name and extra-field lengths at bytes 26-29
            if local[:4] != b"PK\x03\x04":
                raise ValueError(f"{path}: no local header for {name}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            if dtype.hasobject:
                raise ValueError(f"{name} in {path} holds Python objects")
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                                  order="F" if fortran else "C")
    return out


ALIGN = 64  # bytes: numpy's own .npy header alignment; SIMD loads and BLAS want at least the item size
_PADDING_FIELD = 0xD935  # the zip extra-field id Android's zipalign uses for the same purpose


def _aligned_member(name: str, offset: int) -> zipfile.ZipInfo:
    """A stored member whose local header, written at ``offset`` with a zip64 extra field, ends on an ``ALIGN``
    boundary: the .npy header that follows is a multiple of 64 bytes, so the array data is aligned too. np.savez
    does not align; a member's data then starts at any byte, and numpy computes on a mapped array that is not
    even 4-byte aligned without BLAS: a batched product ran 3.5-5x slower (bench/probes/bench_exact_blocks.py)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    fixed = 30 + len(name.encode()) + 20  # local header, file name, zip64 extra field (<HHQQ)
    pad = -(offset + fixed + 4) % ALIGN  # our field: 4 bytes of id and length, then the padding
    info.extra = struct.pack("<HH", _PADDING_FIELD, pad) + bytes(pad)
    return info


def write_npz_blocks(fh, members: dict[str, Sequence[np.ndarray]]) -> None:
    """Write an uncompressed ``np.savez``-format archive whose member ``name`` is the row-wise concatenation of
    ``members[name]``, one block at a time: an array larger than memory (a gallery assembled from its shards,
    issue 10) is never built. Each member's array data starts on a 64-byte boundary of the file (see
    :func:`_aligned_member`), so :func:`npz_memmap` maps aligned arrays. ``np.load`` reads the result."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, blocks in members.items():
            first = np.asarray(blocks[0])
            shape = first.shape if first.ndim == 0 else (sum(len(b) for b in blocks), *first.shape[1:])  # 0-d: a scalar
            header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False, "shape": shape}
            with archive.open(_aligned_member(f"{name}.npy", fh.tell()), "w", force_zip64=True) as out:
                np.lib.format.write_array_header_1_0(out, header)
                for block in blocks:
                    if np.shape(block)[1:] != first.shape[1:]:
                        raise ValueError(f"{name}: block of shape {np.shape(block)} after {first.shape}")
                    if first.ndim == 0:
                        out.write(np.ascontiguousarray(block, dtype=first.dtype).tobytes())
                        continue
                    # ~64 MB at a time: a memory-mapped block is paged through, never converted whole
                    step = max(1, (64 << 20) // max(1, first[:1].nbytes))
                    for s in range(0, len(block), step):
                        part = np.ascontiguousarray(block[s:s + step], dtype=first.dtype)
                        out.write(memoryview(part.reshape(-1).view(np.uint8)))
