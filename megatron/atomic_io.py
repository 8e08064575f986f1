"""Crash-safe file output, for datasets, index caches, configs and checkpoints alike.

Write to a temporary name, fsync, then rename over the target: a reader sees either the old
file or the complete new one, never a torn write, whatever kills the writer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def temp_path_for(path: str | os.PathLike) -> Path:
    """A sibling temporary name unique to this process (so concurrent writers never collide)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    # Makes the rename itself durable; some filesystems refuse to open a directory, which is fine.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """fsync `tmp` and rename it over `target`."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        commit(tmp, path)
    finally:
        remove_quietly(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (after another library wrote them)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        commit(tmp, path)
    finally:
        remove_quietly(tmp)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
        commit(tmp, path)
    finally:
        remove_quietly(tmp)


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or unreadable (e.g. left by another version)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
