"""deepy.py refuses a hostfile DeepSpeed's launcher would misread (missing: silently local; bad line: traceback) before launching."""
from __future__ import annotations

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments.launch_command import plan_launch

SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32}


def plan(environ=None, **launcher):
    args = NeoXArgs.from_dict({**SHAPE, **launcher})
    return plan_launch(args, "train.py", ["a.yml"], cuda_available=True, environ=environ or {}, repo_root="/repo")


def hostfile(tmp_path, text: str) -> str:
    path = tmp_path / "hostfile"
    path.write_text(text)
    return str(path)


def test_missing_configured_hostfile_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*host slots=N"):
        plan(hostfile=str(tmp_path / "hostfle"))


def test_missing_dlts_hostfile_keeps_the_local_launch():
    assert plan(environ={"DLTS_HOSTFILE": "/job/hostfile"}).runner_args[:2] == ["--hostfile", "/job/hostfile"]


@pytest.mark.parametrize("text,needle", [("node0 slots 8\n", r"hostfile:1: 'node0 slots 8' is not a `host slots=N` line"),
                                         ("a slots=8\na slots=4\n", "listed twice"),
                                         ("# only a comment\n\n", "lists no hosts")])
def test_bad_hostfile_names_the_line(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        plan(hostfile=hostfile(tmp_path, text))


def test_more_nodes_than_hosts_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="num_nodes: 3 but hostfile .* lists 2 host"):
        plan(hostfile=hostfile(tmp_path, "a slots=8\nb slots=8  # spare\n"), num_nodes=3)


def test_good_hostfile_passes_through(tmp_path):
    path = hostfile(tmp_path, "# cluster\na slots=8\nb slots=8  # spare\n")
    assert plan(hostfile=path, launcher="slurm", master_addr="a").runner_args[:2] == ["--hostfile", path]
