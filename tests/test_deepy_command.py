"""deepy.py's launcher command for GPU clusters (hostfile, include, slurm, ...) and the CPU fallback, built without launching."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from megatron.neox_arguments import ConfigError, NeoXArgs
from megatron.neox_arguments import launch_command
from megatron.neox_arguments.launch_command import plan_launch, task_for_script

REPO = Path(__file__).resolve().parents[1]
SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32}
CONFIGS = ["configs/a.yml", "configs/b.yml"]


@pytest.fixture(autouse=True)
def default_port_counts_as_free(monkeypatch):
    """Most plans here keep the default master_port 29500, which another run on this machine may hold
    (a taken port is refused, as the test of that check shows with a port it binds itself)."""
    check = launch_command._port_taken
    monkeypatch.setattr(launch_command, "_port_taken", lambda port: port != 29500 and check(port))


def plan(cuda: bool = True, environ=None, script_args=(), **launcher):
    args = NeoXArgs.from_dict({**SHAPE, **launcher})
    return plan_launch(args, "train.py", CONFIGS, cuda_available=cuda, environ=environ or {}, repo_root="/repo",
                       script_args=script_args)


def runner_parses(runner_args):
    from deepspeed.launcher.runner import parse_args

    return parse_args(runner_args)


def test_single_node_gpu_passes_the_configs_and_no_local_rank_argument():
    p = plan()
    assert p.runner_args == ["--master_port", "29500", "--no_local_rank", "train.py", *CONFIGS]
    parsed = runner_parses(p.runner_args)
    assert (parsed.user_script, parsed.user_args, parsed.no_local_rank) == ("train.py", CONFIGS, True)
    assert p.env == {"PYTHONPATH": "/repo"}
    assert p.command()[:3] == [sys.executable, "-m", "megatron.neox_arguments.deepspeed_runner"]
    assert "WANDB" in p.command()[3].split(",") and "NCCL" in p.command()[3].split(",")


def test_hostfile_nodes_gpus_and_master_address(tmp_path):
    hosts = tmp_path / "hosts.ds"
    hosts.write_text("node0 slots=8\nnode1 slots=8\n")
    p = plan(hostfile=str(hosts), num_nodes=2, num_gpus=8, master_addr="10.1.1.1", master_port=6000, no_ssh_check=True)
    assert p.runner_args[:-4] == ["--hostfile", str(hosts), "--num_nodes", "2", "--num_gpus", "8",
                                  "--master_addr", "10.1.1.1", "--master_port", "6000", "--no_ssh_check"]
    parsed = runner_parses(p.runner_args)
    assert (parsed.hostfile, parsed.num_nodes, parsed.num_gpus, parsed.master_port, parsed.launcher) == (str(hosts), 2, 8, 6000, "pdsh")


def test_dlts_hostfile_and_master_addr_come_from_the_environment():
    p = plan(environ={"DLTS_HOSTFILE": "/job/hosts", "MASTER_ADDR": "node0", "PYTHONPATH": "/x"})
    assert p.runner_args[:4] == ["--hostfile", "/job/hosts", "--master_addr", "node0"]
    assert p.env["PYTHONPATH"] == "/repo:/x"


def test_include_drops_num_gpus_with_a_notice_as_gpt_neox_does():
    p = plan(include="worker-0@worker-1:0,2", num_gpus=4)
    assert "--num_gpus" not in p.runner_args and p.runner_args[:2] == ["--include", "worker-0@worker-1:0,2"]
    assert "num_gpus: 4 is dropped" in p.notices[0]
    assert runner_parses(p.runner_args).include == "worker-0@worker-1:0,2"


def test_slurm_runs_ranks_with_srun_and_passes_comment_and_account():
    from deepspeed.launcher.multinode_runner import SlurmRunner

    p = plan(launcher="slurm", deepspeed_slurm=True, comment="neox", account="proj 1", master_addr="node0", num_gpus=4)
    assert ["--launcher", "slurm"] == p.runner_args[6:8] and "--force_multi" in p.runner_args
    assert p.env["MASTER_ADDR"] == "node0" and p.env["MASTER_PORT"] == "29500"
    parsed = runner_parses(p.runner_args)
    cmd = SlurmRunner(parsed, "e30=", {"node0": 4, "node1": 4}).get_cmd({}, {"node0": [0, 1, 2, 3], "node1": [0, 1, 2, 3]})
    assert cmd[:3] == ["srun", "-n", "8"] and "--comment=neox" in cmd and "--account=proj 1" in cmd
    assert cmd[-3:] == ["train.py", *CONFIGS]


def test_direct_launchers_need_the_master_address():
    with pytest.raises(ConfigError, match="export MASTER_ADDR"):
        plan(launcher="openmpi")
    assert plan(launcher="openmpi", environ={"MASTER_ADDR": "n0"}).env["MASTER_ADDR"] == "n0"


def test_without_cuda_ranks_run_on_the_cpu():
    p = plan(cuda=False, num_gpus=2, hostfile="/h", master_port=1234)
    assert p.runner_args == ["--num_gpus", "2", "--master_port", "1234", "--no_local_rank", "train.py", *CONFIGS]
    assert p.env["DS_ACCELERATOR"] == "cpu" and int(p.env["OMP_NUM_THREADS"]) >= 1
    assert "no CUDA device: running 2 local CPU process(es); hostfile ignored" in p.notices[0]
    assert plan(cuda=False).runner_args[:2] == ["--num_gpus", "1"]
    assert "OMP_NUM_THREADS" not in plan(cuda=False, environ={"OMP_NUM_THREADS": "3"}).env


def test_entry_scripts_map_to_their_checks():
    assert [task_for_script(s) for s in ("train.py", "tools/../eval.py", "generate.py", "mine.py")] == ["train", "eval", "generate", None]


def test_deepy_cli_resolves_paths_like_gpt_neox(tmp_path):
    sys.path.insert(0, str(REPO))
    import deepy

    assert deepy.config_paths(["demo", "pythia/160M.yml"], "configs") == ["configs/demo.yml", "configs/pythia/160M.yml"]
    # an existing folder keeps its name, so that the loader says it is a folder (not that FOLDER.yml is missing)
    assert deepy.config_paths([str(tmp_path)], None) == [str(tmp_path)]
    cli = deepy.parse_cli(["train.py", "a.yml", "b.yml"])
    assert (cli.user_script, cli.conf_file) == ("train.py", ["a.yml", "b.yml"])


def test_deepy_rejects_a_bad_config_before_launching(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    import deepy

    bad = tmp_path / "bad.yml"
    bad.write_text("num_layer: 2\n")
    assert deepy.main([str(REPO / "train.py"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key `num_layer`" in err and "did you mean `num_layers`" in err
    assert deepy.main([str(tmp_path / "nope.py"), str(bad)]) == 2
    assert "script" in capsys.readouterr().err


def test_expected_world_size_lets_deepy_check_batch_sizes_early(tmp_path):
    from megatron.neox_arguments.launch_command import expected_world_size

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# cluster\nnode1 slots=8\nnode2 slots=8\nnode3 slots=4\n")

    def world(cuda=True, devices=4, environ=None, **launcher):
        return expected_world_size(NeoXArgs.from_dict({**SHAPE, **launcher}), cuda_available=cuda, device_count=devices, environ=environ or {})

    assert world() == 4 and world(num_gpus=2) == 2 and world(cuda=False) == 1 and world(cuda=False, num_gpus=3) == 3
    assert world(hostfile=str(hostfile)) == 20 and world(hostfile=str(hostfile), num_nodes=2) == 16
    assert world(hostfile=str(hostfile), num_gpus=2) == 6
    assert world(environ={"DLTS_HOSTFILE": str(hostfile)}, num_nodes=1) == 8
    assert world(include="node1") is None and world(global_num_gpus=64) == 64


def test_deepy_rejects_batch_sizes_that_do_not_fit_the_ranks(tmp_path, capsys):
    import deepy

    vocab = tmp_path / "tok.json"
    vocab.write_text("{}")
    for suffix in (".bin", ".idx"):  # deepy checks that the data files exist
        (tmp_path / f"d{suffix}").write_bytes(b"")
    config = tmp_path / "c.yml"
    config.write_text("num_layers: 2\nhidden_size: 64\nnum_attention_heads: 2\nseq_length: 32\ntrain_iters: 2\n"
                      f"train_batch_size: 5\ntrain_micro_batch_size_per_gpu: 2\nnum_gpus: 2\ndata_path: {tmp_path / 'd'}\n"
                      f"tokenizer_type: HFTokenizer\nvocab_file: {vocab}\n")
    assert deepy.main([str(REPO / "train.py"), str(config)]) == 2
    assert "train_batch_size=5 must equal" in capsys.readouterr().err


# ------------------------------------------------------------------ refused before launch


def test_fp16_on_cpu_is_refused_with_the_override_to_use():
    with pytest.raises(ConfigError, match=r"fp16 runs on GPUs only.*`precision: fp32` and `fp16: \{enabled: false\}`"):
        plan(False, precision="fp16", fp16={"enabled": True})


def test_the_suggested_override_loads_and_fp16_stays_fine_on_gpus():
    plan(False, precision="fp32", fp16={"enabled": False})
    assert plan(True, precision="fp16", fp16={"enabled": True}).runner_args[-3:] == ["train.py", *CONFIGS]


def test_global_num_gpus_must_match_the_cpu_processes_started():
    from megatron.neox_arguments.launch_command import expected_world_size

    def world(**keys):
        return expected_world_size(NeoXArgs.from_dict({**SHAPE, **keys}), cuda_available=False, device_count=0, environ={})

    # Before: the batch sizes were checked for 3 ranks while one process was started.
    with pytest.raises(ConfigError, match="global_num_gpus: 3 but this launch starts 1 CPU process"):
        world(global_num_gpus=3)
    assert world(global_num_gpus=3, num_gpus=3) == 3


def test_fp16_config_may_still_generate_on_cpu():
    args = NeoXArgs.from_dict({**SHAPE, "precision": "fp16", "fp16": {"enabled": True}})
    plan_launch(args, "generate.py", ["a.yml"], cuda_available=False, environ={}, repo_root="/r")  # generation runs in fp32 here


def test_kernel_flag_on_cpu_is_explained_once():
    notices = plan(False, USE_SEP_ATTN_KERNEL_ACCELERATOR=True).notices
    assert [n for n in notices if "USE_SEP_ATTN_KERNEL_ACCELERATOR is a GPU kernel" in n] == notices
    assert plan(False, USE_SEP_ATTN_KERNEL_ACCELERATOR=False).notices == []
    assert plan(True, USE_SEP_ATTN_KERNEL_ACCELERATOR=True).notices == []


def write_hostfile(tmp_path, text: str) -> str:
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
        plan(hostfile=write_hostfile(tmp_path, text))


def test_more_nodes_than_hosts_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="num_nodes: 3 but hostfile .* lists 2 host"):
        plan(hostfile=write_hostfile(tmp_path, "a slots=8\nb slots=8  # spare\n"), num_nodes=3)


def test_good_hostfile_passes_through(tmp_path):
    path = write_hostfile(tmp_path, "# cluster\na slots=8\nb slots=8  # spare\n")
    assert plan(hostfile=path, launcher="slurm", master_addr="a").runner_args[:2] == ["--hostfile", path]


def test_config_before_script_is_explained(capsys, monkeypatch):
    sys.path.insert(0, str(REPO))
    import deepy

    monkeypatch.chdir(REPO)
    # Before: "config file 'train.py.yml' does not exist", as the config was taken for the script.
    assert deepy.main(["configs/demo.yml", "train.py"]) == 2
    err = capsys.readouterr().err
    assert "the script comes first" in err and "python deepy.py train.py CONFIG.yml" in err and "train.py.yml" not in err


def test_a_taken_rendezvous_port_is_named_before_launching():
    import socket

    from megatron.parallel.distributed import free_port

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        for cuda in (False, True):
            with pytest.raises(ConfigError, match=f"master_port {port} is taken on this machine"):
                plan(cuda=cuda, master_port=port)
        plan(cuda=True, master_port=port, master_addr="10.0.0.1")  # the port is the first node's, not this one's
    plan(cuda=False, master_port=port)


def test_options_after_the_configs_go_to_the_script(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    import deepy

    cli = deepy.parse_cli(["eval.py", "-d", "configs", "a.yml", "b", "--eval_tasks", "x", "y", "--include_path", "/t"])
    assert (cli.conf_dir, cli.conf_file) == ("configs", ["a.yml", "b"])
    assert cli.script_args == ["--eval_tasks", "x", "y", "--include_path", "/t"]
    cli = deepy.parse_cli(["--conf_dir=configs", "train.py", "a.yml"])
    assert (cli.conf_dir, cli.user_script, cli.script_args) == ("configs", "train.py", [])
    eval_py = str(REPO / "eval.py")
    assert deepy.check_script_args(eval_py, ["a.yml"], ["--include_path", "/t", "--limit", "3"]) is None
    assert "eval.py does not take --limt 3" in deepy.check_script_args(eval_py, ["a.yml"], ["--limt", "3"])
    assert "train.py takes config files only, not --lr 3" in deepy.check_script_args("train.py", ["a.yml"], ["--lr", "3"])
    assert deepy.check_script_args("mine.py", ["a.yml"], ["--anything"]) is None  # the user's script decides
    p = plan(cuda=False, script_args=["--eval_tasks", "x"])
    assert p.runner_args[-3:] == [*CONFIGS[-1:], "--eval_tasks", "x"]
