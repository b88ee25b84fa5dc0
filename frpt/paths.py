"""Guards for folders a user names (a checkpoint folder, a dataset root): one sentence for a path that is not a
plain folder, before anything is listed or read.

A typed path can be a symlink loop, a device file, a FIFO (opening it blocks) or a folder of the kernel's pseudo
filesystems (/proc, /sys, /dev: endless or blocking files, and /proc/self/root leads back to /), none of which
is ever a checkpoint or a dataset. Checks use stat and realpath only, so they cost the same on a folder of a
million files.
"""
from __future__ import annotations

import errno
import os
import stat

from .errors import FRPTError

#: Kernel pseudo filesystems: never a checkpoint, a dataset or a file of one.
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def shown(path: str) -> str:
    """``path`` printable in one line (undecodable bytes and control characters replaced)."""
    text = os.fsdecode(path).encode("utf-8", "replace").decode("utf-8")
    return "".join(c if c.isprintable() else "\ufffd" for c in text) or "''"


def in_system_folder(path: str | os.PathLike) -> bool:
    """Whether ``path``, symlinks resolved, lies in /proc, /sys or /dev."""
    try:
        real = os.path.realpath(os.fspath(path))
    except (OSError, ValueError):
        return False
    return any(real == top or real.startswith(top + "/") for top in SYSTEM_FOLDERS)


def user_folder(path: str | os.PathLike, what: str, hint: str, error: type[FRPTError]) -> str:
    """``path`` (``~`` expanded) if it is a plain folder outside the system folders; else raise ``error`` with one
    sentence naming the path and what is wrong with it, ending with ``hint`` (what to pass instead)."""
    text = os.path.expanduser(os.fsdecode(os.fspath(path)))
    if "\0" in text:
        raise error(f"{what} {shown(text)} contains a NUL character, which no file name can; {hint}.")
    try:
        info = os.stat(text)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what} {shown(text)} is a symlink loop; {hint}.") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise error(f"{what} {shown(text)} does not exist; {hint}.") from None
        raise error(f"{what} {shown(text)} cannot be read ({exc.strerror or exc}); {hint}.") from None
    if in_system_folder(text):
        raise error(f"{what} {shown(text)} is inside a system folder ({', '.join(SYSTEM_FOLDERS)}); {hint}.")
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else "a device, pipe or socket"
        raise error(f"{what} {shown(text)} is {kind}, not a folder; {hint}.")
    return text


def plain_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file outside the system folders (not a FIFO, device or /proc file)."""
    return os.path.isfile(path) and not in_system_folder(path)
