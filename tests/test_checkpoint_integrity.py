"""Checkpoint checksums: bytes changed after a save are refused, and the ranks share the reading."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    from megatron.checkpointing.integrity import file_records

    folder = tmp_path / "global_step4"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"iteration": 4, "world_size": 1, "files": file_records(folder, sorted(files))}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_same_size_damage_is_refused_and_named(tmp_path):
    from megatron.checkpointing.checkpoint import CheckpointError, verify_checkpoint

    folder = _folder(tmp_path, {"a.pt": b"a" * 1000, "b.pt": os.urandom(5000), "c.pt": b""})
    assert verify_checkpoint(folder)["files"]["a.pt"] == {"size": 1000, "crc32": "%08x" % __import__("zlib").crc32(b"a" * 1000)}
    data = bytearray((folder / "b.pt").read_bytes())
    data[2500] ^= 1  # one bit, mid-file: sizes alone cannot see it
    (folder / "b.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"global_step4 is damaged: the bytes of b.pt changed after the save .*"
                                              r"iteration: N"):
        verify_checkpoint(folder)


def test_manifests_written_before_checksums_still_load(tmp_path):
    from megatron.checkpointing.checkpoint import verify_checkpoint

    folder = tmp_path / "global_step2"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"x" * 7)
    (folder / "manifest.json").write_text(json.dumps({"files": {"model.pt": 7}}))
    assert verify_checkpoint(folder)["files"] == {"model.pt": 7}


def test_a_malformed_record_is_a_damaged_manifest(tmp_path):
    from megatron.checkpointing.checkpoint import CheckpointError, verify_checkpoint

    folder = tmp_path / "global_step2"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": {"model.pt": "seven"}}))
    with pytest.raises(CheckpointError, match="manifest.json is not a valid manifest"):
        verify_checkpoint(folder)


WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch.distributed as dist
    sys.path.insert(0, {root!r})
    dist.init_process_group("gloo")
    from megatron.checkpointing.checkpoint import CheckpointError, verify_checkpoint
    from megatron.checkpointing.integrity import file_records
    import megatron.checkpointing.integrity as integrity

    folder, rank = Path({folder!r}), dist.get_rank()
    names = sorted(p.name for p in folder.iterdir())
    read = []
    crc = integrity.file_crc32
    integrity.file_crc32 = lambda path: (read.append(path.name), crc(path))[1]
    records = file_records(folder, names)
    out = {{"records": records, "read": sorted(read)}}
    if rank == 0:
        (folder / "manifest.json").write_text(json.dumps({{"files": records}}))
    dist.barrier()
    if rank == 1:  # damage a file that only rank 1 reads: rank 0 must stop too
        path = folder / names[1]
        path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    dist.barrier()
    try:
        verify_checkpoint(folder)
        out["error"] = None
    except CheckpointError as exc:
        out["error"] = str(exc)
    Path({out!r} + str(rank)).write_text(json.dumps(out))
    dist.destroy_process_group()
""")


def test_two_ranks_share_the_reading_and_stop_together(tmp_path):
    from megatron.parallel.distributed import free_port

    folder = tmp_path / "ck"
    folder.mkdir()
    for i in range(5):
        (folder / f"f{i}.pt").write_bytes(os.urandom(100 + i))
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), folder=str(folder), out=str(tmp_path / "out")))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script)], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"out{r}").read_text()) for r in (0, 1))
    names = [f"f{i}.pt" for i in range(5)]
    assert r0["records"] == r1["records"] and sorted(r0["records"]) == names
    assert r0["read"] == names[0::2] and r1["read"] == names[1::2]
    for r in (r0, r1):
        assert r["error"] and "the bytes of f1.pt changed after the save" in r["error"]
