"""Any ImageFolder-style tree ``root/<class>/<images>`` as a zero-shot retrieval dataset.

Classes are the sorted sub-folder names; the first half train, the second half test, unless
``split_file`` gives lines ``<class_name> train|test``. Filenames that are not valid UTF-8 are kept
as surrogate-escaped ``str`` (os.fsdecode), which open() accepts, and are shown with U+FFFD in messages.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from frpt.data.base import RetrievalDataset, check_split, missing_error, read_lines
from frpt.data.images import display_path
from frpt.errors import DatasetError
from frpt.paths import in_system_folder

__all__ = ["build_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _list_images(class_dir: str, unreadable: list[str]) -> list[str]:
    found: list[str] = []

    def onerror(exc: OSError) -> None:
        unreadable.append(exc.filename if exc.filename is not None else class_dir)

    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # os.walk does not follow links below
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, f))
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _check_class_folder(root: str, cls: str) -> None:
    """Refuse a class folder in /proc, /sys or /dev, or a symlink back up to the root or above it (walking it would
    list the machine, e.g. /proc/self/root)."""
    path = os.path.join(root, cls)
    real, top = os.path.realpath(path), os.path.realpath(root)
    if in_system_folder(real) or top == real or top.startswith(real.rstrip("/") + "/"):
        raise DatasetError(f"class folder {display_path(path)} is {display_path(real)}, a system folder or a "
                           "folder above the root; replace it with the class's images.")


def _read_split_file(path: str, classes: list[str]) -> dict[str, str]:
    assignment: dict[str, str] = {}
    known = set(classes)
    for lineno, line in read_lines(path, "split file"):
        if line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1].lower() not in ("train", "test"):
            raise DatasetError(
                f"line {lineno} of split file {display_path(path)} is malformed (expected "
                "'<class_name> train|test'); fix that line."
            )
        name, tag = parts[0], parts[1].lower()
        if name not in known:
            raise DatasetError(
                f"line {lineno} of split file {display_path(path)} names class {display_path(name)!r}, "
                "which has no folder under the root; fix the name or add the folder."
            )
        if name in assignment:
            raise DatasetError(f"class {display_path(name)!r} appears twice in split file {display_path(path)}; keep one line per class.")
        assignment[name] = tag
    return assignment


def build_folder(
    split: str,
    root: str | os.PathLike,
    transform: Callable | None = None,
    split_file: str | os.PathLike | None = None,
) -> RetrievalDataset:
    """Class-per-folder dataset; see the module docstring for the split rule."""
    check_split(split)
    root = os.fsdecode(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetError(f"folder root {display_path(root)} does not exist or is not a directory; pass --root pointing at a folder of class sub-folders.")
    try:
        # scandir's is_dir reads the entry type from the listing (no stat per entry): a folder of 100,000 files
        # is refused in a fraction of a second.
        with os.scandir(root) as it:
            entries = sorted(e.name for e in it if not e.name.startswith(".") and _is_dir(e))
    except OSError as exc:
        raise DatasetError(f"folder root {display_path(root)} cannot be listed ({exc.strerror or exc}); check its permissions.") from None
    if len(entries) < 2:
        raise DatasetError(
            f"folder root {display_path(root)} has {len(entries)} class sub-folder(s); "
            "zero-shot retrieval needs at least 2 (one per class, images inside)."
        )
    # Class names are the printable form of the folder names (undecodable bytes -> U+FFFD), so
    # they can be shown anywhere and matched against a UTF-8 split file.
    shown = {e: display_path(e) for e in entries}
    if split_file is not None:
        assignment = _read_split_file(os.fsdecode(os.fspath(split_file)), list(shown.values()))
        dirs = [e for e in entries if assignment.get(shown[e]) == split]
    else:
        half = len(entries) // 2
        dirs = entries[:half] if split == "train" else entries[half:]
    classes = [shown[e] for e in dirs]
    if not classes:
        raise DatasetError(f"the {split} split of {display_path(root)} has no classes; assign some classes to '{split}'.")

    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    unreadable: list[str] = []
    for cls in dirs:  # all before any walk: / as a root must not list /bin before refusing /proc
        _check_class_folder(root, cls)
    for label, cls in enumerate(dirs):
        files = _list_images(os.path.join(root, cls), unreadable)
        if not files:
            empty.append(os.path.join(root, cls))
        samples.extend((f, label) for f in files)
    if unreadable:
        raise missing_error("folder cannot be listed:", unreadable, "check its permissions")
    if empty:
        raise missing_error(
            "class folder has no images (.jpg .jpeg .png .bmp .webp):", empty, "add images or remove the folder"
        )
    return RetrievalDataset("folder", split, classes, samples, transform, None, root)
