"""Per-file CRC32 checksums of a checkpoint, computed and checked with the work shared across ranks.

A manifest's sizes catch a truncated or missing file; the checksums catch bytes that changed after
the save (a damaged disk, a partial copy over an older file of the same size), which torch.load may
otherwise read without complaint. CRC32 is meant for accidents, not tampering, and it runs at
several GB/s; each rank reads every world-size-th file, so a large checkpoint costs one pass over
its bytes spread across the job.
"""
from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from megatron.parallel.distributed import all_gather_objects, rank_and_world

_CHUNK = 16 << 20


def file_crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)  # releases the GIL, so the thread pool below reads files in parallel
    return f"{crc:08x}"


def _map(fn, items):
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, max(len(items), 1))) as pool:
        return list(pool.map(fn, items))


def file_records(folder: Path, names: list[str]) -> dict[str, dict]:
    """Collective: {name: {"size", "crc32"}} of `names` (files of `folder`), every rank summing its share."""
    rank, world = rank_and_world()
    mine = names[rank::world]
    local = dict(zip(mine, _map(lambda n: {"size": (folder / n).stat().st_size, "crc32": file_crc32(folder / n)}, mine)))
    merged: dict[str, dict] = {}
    for part in all_gather_objects(local):
        merged.update(part)
    return {name: merged[name] for name in names}


def expected_size(record) -> int:
    """A manifest entry's size: a record, or the bare size of manifests written before checksums."""
    return record["size"] if isinstance(record, dict) else int(record)


def checksum_problem(folder: Path, files: dict) -> Optional[str]:
    """Collective: the first file of `files` whose bytes differ from its recorded checksum, as a message.

    Every rank checks its share and every rank gets the same answer, so all of them stop together.
    """
    rank, world = rank_and_world()
    names = sorted(n for n, rec in files.items() if isinstance(rec, dict) and "crc32" in rec)
    mine = names[rank::world]
    found = [n for n, crc in zip(mine, _map(lambda n: file_crc32(folder / n), mine)) if crc != files[n]["crc32"]]
    damaged = sorted(n for part in all_gather_objects(found) for n in part)
    if not damaged:
        return None
    return (f"checkpoint {folder} is damaged: the bytes of {', '.join(damaged[:3])}"
            f"{' and others' if len(damaged) > 3 else ''} changed after the save (CRC32 differs from the manifest's). "
            f"Load an earlier checkpoint with `iteration: N`")
