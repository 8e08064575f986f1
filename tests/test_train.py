"""End-to-end training on CPU: loss falls, determinism, attention modes, data parallelism, exact resume, crash safety."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron.parallel.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CHAR_SEPARATORS = [ord(c) for c in ".,?!;: \t\n"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from megatron.data.preprocess import preprocess
    from megatron.data.tokenizers import build_tokenizer

    out = tmp_path_factory.mktemp("corpus")
    preprocess(inputs=str(FIXTURES / "train_corpus.txt"), output_prefix=str(out / "corpus"),
               tokenizer=build_tokenizer("CharLevelTokenizer", None), txt_mode="paragraph",
               append_eod=True, progress=False, log=lambda _: None)
    return str(out / "corpus_text_document")


def make_config(tmp_path: Path, corpus: str, name: str = "cfg.yml", **overrides) -> str:
    cfg = {
        "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 64,
        "max_position_embeddings": 64, "pos_emb": "rotary", "rotary_pct": 0.25, "gpt_j_residual": True,
        "no_weight_tying": True, "make_vocab_size_divisible_by": 64,
        "separator_token_ids": CHAR_SEPARATORS, "init_tok_max_idx": 2, "prefill_local_window_size": 8,
        "USE_SEP_ATTN_KERNEL_ACCELERATOR": False,
        "train_iters": 6, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8}},
        "min_lr": 3.0e-4, "lr_decay_style": "cosine", "warmup": 0.1, "weight_decay": 0.1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 0}, "precision": "fp32", "seed": 7,
        "data_path": corpus, "split": "90,10,0", "tokenizer_type": "CharLevelTokenizer",
        "eval_interval": 1000, "eval_iters": 1, "log_interval": 1, "num_workers": 0,
    }
    cfg.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run(tmp_path: Path, config: str, nproc: int = 1, env: dict | None = None, check: bool = True):
    out = tmp_path / f"losses_{os.urandom(4).hex()}.json"
    script = str(FIXTURES / "train_run.py")
    if nproc == 1:
        cmd = [sys.executable, script, str(out), config]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), script, str(out), config]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return json.loads(out.read_text())
    return proc


def test_loss_falls_and_run_dir_holds_config_and_logs(tmp_path, corpus):
    cfg = make_config(tmp_path, corpus, train_iters=30, log_dir=str(tmp_path / "run"),
                      tensorboard_dir=str(tmp_path / "tb"), PRINT_KV_RATIO=True, print_ratio_intervals=10)
    result = run(tmp_path, cfg)
    losses = result["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    resolved = yaml.safe_load((tmp_path / "run" / "config.yml").read_text())
    assert resolved["prefill_local_window_size"] == 8
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_same_config_same_losses(tmp_path, corpus):
    cfg = make_config(tmp_path, corpus, train_iters=4)
    assert run(tmp_path, cfg)["losses"] == run(tmp_path, cfg)["losses"]


@pytest.mark.parametrize("mode", [
    {"streamingLLM": True},
    {"USE_PREFILL_LOCAL_WIN_SIZES_wrt_LAYERS": True, "prefill_loc_win_size_list": [64, 4]},
    {"USE_ORIGINAL_FULL_ATTEN": True},
    {"reset_attention_mask": True, "reset_position_ids": True},
], ids=["streamingllm", "per-layer-windows", "vanilla", "document-masks"])
def test_attention_modes_train(tmp_path, corpus, mode, sepllm_losses):
    losses = run(tmp_path, make_config(tmp_path, corpus, train_iters=3, **mode))["losses"]
    assert len(losses) == 3 and all(l == l and l < 20 for l in losses)
    # Runs are deterministic, so a mode whose setting were ignored would repeat the default run's losses.
    assert losses[0] != pytest.approx(sepllm_losses[0], rel=1e-6, abs=1e-6), (losses, sepllm_losses)


@pytest.fixture(scope="module")
def sepllm_losses(tmp_path_factory, corpus):
    """Losses of the default config (SepLLM, window 8) over the same 3 steps."""
    d = tmp_path_factory.mktemp("sepllm_default")
    return run(d, make_config(d, corpus, train_iters=3))["losses"]


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", [1, 2])
def test_two_processes_match_one(tmp_path, corpus, stage):
    """Same global batch (8): 1 process with 2 accumulation steps vs 2 processes with 1."""
    one = run(tmp_path, make_config(tmp_path, corpus, "one.yml", train_iters=5, gradient_accumulation_steps=2,
                                    zero_optimization={"stage": stage}))["losses"]
    two = run(tmp_path, make_config(tmp_path, corpus, "two.yml", train_iters=5, zero_optimization={"stage": stage}),
              nproc=2)["losses"]
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("nproc,stage,precision", [(1, 0, "fp32"), (2, 2, "fp32"), (2, 1, "bfloat16"),
                                                   (1, 1, "autocast"), (2, 1, "autocast")],
                         ids=["1proc-zero0", "2proc-zero2", "2proc-zero1-bf16", "1proc-autocast", "2proc-zero1-autocast"])
def test_resume_is_exact(tmp_path, corpus, nproc, stage, precision):
    """bf16 ZeRO-1 runs DeepSpeed's BF16_Optimizer (its own checkpoint files), torch_autocast the torch
    optimizer over fp32 parameters (ZeRO 1 as stage 0 on one process): resume must be exact too."""
    autocast = precision == "autocast"
    common = dict(train_iters=6, lr_decay_iters=6, zero_optimization={"stage": stage}, checkpoint_factor=3,
                  precision="bfloat16" if autocast else precision, torch_autocast=autocast)
    full = run(tmp_path, make_config(tmp_path, corpus, "full.yml", save=str(tmp_path / "full"), **common), nproc)
    stopped = run(tmp_path, make_config(tmp_path, corpus, "a.yml", save=str(tmp_path / "ck"), **{**common, "train_iters": 3}), nproc)
    resumed = run(tmp_path, make_config(tmp_path, corpus, "b.yml", save=str(tmp_path / "ck"), load=str(tmp_path / "ck"), **common), nproc)
    assert stopped["losses"] == full["losses"][:3]
    assert resumed["start"] == 3
    assert resumed["losses"] == full["losses"][3:], "resumed losses must equal the uninterrupted run bit for bit"
    if precision == "bfloat16":
        assert list((tmp_path / "ck").glob("global_step3/bf16_zero_pp_rank_*optim_states.pt")), "expected BF16_Optimizer states"
    if autocast:
        import torch

        states = torch.load(tmp_path / "ck" / "global_step3" / "mp_rank_00_model_states.pt", weights_only=False)
        assert all(t.dtype == torch.float32 for t in states["module"].values() if t.is_floating_point()), "fp32 parameters"
        zero_files = list((tmp_path / "ck").glob("global_step3/*zero_pp_rank_*optim_states.pt"))
        assert bool(zero_files) == (nproc > 1), "ZeRO 1 partitions over 2 processes, runs as stage 0 on one"


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, corpus):
    from megatron.checkpointing.checkpoint import CheckpointError, verify_checkpoint

    ck = tmp_path / "ck"
    common = dict(train_iters=6, lr_decay_iters=6, checkpoint_factor=3, save=str(ck), load=str(ck))
    full = run(tmp_path, make_config(tmp_path, corpus, "full.yml", **{**common, "save": str(tmp_path / "f"), "load": None}))
    killed = run(tmp_path, make_config(tmp_path, corpus, "a.yml", **common), env={"SEPLLM_TEST_KILL_AT_MANIFEST": "6"}, check=False)
    assert killed.returncode != 0
    assert (ck / "latest").read_text() == "global_step3"
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        verify_checkpoint(ck / "global_step6")
    resumed = run(tmp_path, make_config(tmp_path, corpus, "b.yml", **common))
    assert resumed["start"] == 3 and resumed["losses"] == full["losses"][3:]


def test_damaged_checkpoint_is_refused(tmp_path, corpus):
    ck = tmp_path / "ck"
    run(tmp_path, make_config(tmp_path, corpus, "a.yml", train_iters=2, save=str(ck)))
    (ck / "global_step2" / "mp_rank_00_model_states.pt").unlink()
    cfg = make_config(tmp_path, corpus, "b.yml", train_iters=4, load=str(ck))
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), cfg], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert "checkpoint error:" in proc.stderr and "file mp_rank_00_model_states.pt is missing" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_rerun_of_a_finished_run_keeps_its_checkpoint(tmp_path, corpus):
    ck = tmp_path / "ck"
    cfg = make_config(tmp_path, corpus, train_iters=2, save=str(ck), load=str(ck), checkpoint_factor=2)
    run(tmp_path, cfg)
    manifest = (ck / "global_step2" / "manifest.json").read_text()
    again = run(tmp_path, cfg)
    assert again["start"] == 2 and again["losses"] == []
    assert (ck / "global_step2" / "manifest.json").read_text() == manifest


def test_exit_interval_stops_the_run_with_its_state_saved(tmp_path, corpus):
    ck = tmp_path / "ck"
    cfg = make_config(tmp_path, corpus, train_iters=6, exit_interval=2, save=str(ck), load=str(ck), checkpoint_factor=100)
    first = run(tmp_path, cfg)
    assert len(first["losses"]) == 2 and (ck / "global_step2").is_dir()
    again = run(tmp_path, cfg)  # resumes at 2 and stops at the next multiple
    assert again["start"] == 2 and len(again["losses"]) == 2 and (ck / "global_step4").is_dir()


@pytest.mark.parametrize("overrides,environ,message", [
    ({"precision": "fp16", "fp16": {"enabled": True}}, {}, "precision: fp16 runs on GPUs only"),
    ({"model_parallel_size": 2}, {"RANK": "0", "WORLD_SIZE": "3"}, "the 3 ranks of this job do not factor"),
])
def test_train_py_refuses_what_the_ranks_cannot_run_before_starting(tmp_path, corpus, overrides, environ, message):
    """Ranks started by torchrun / srun directly get deepy.py's checks: one message, not a traceback per rank."""
    cfg = make_config(tmp_path, corpus, **overrides)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), cfg], cwd=ROOT, env={**env, **environ},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_keep_last_n_prunes_only_complete_older_checkpoints(tmp_path):
    from megatron.checkpointing.checkpoint import _prune, complete_steps

    for it in (2, 10, 4, 6):
        (tmp_path / f"global_step{it}").mkdir()
        (tmp_path / f"global_step{it}" / "manifest.json").write_text("{}")
    (tmp_path / "global_step1").mkdir()  # an interrupted save: no manifest
    assert complete_steps(tmp_path) == ["global_step2", "global_step4", "global_step6", "global_step10"]
    _prune(tmp_path, 2, keep="global_step4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step1", "global_step10", "global_step4", "global_step6"]


def test_resume_under_another_precision_says_so_before_reading_the_optimizer(tmp_path):
    from megatron.checkpointing.checkpoint import CheckpointError, load_checkpoint

    folder = tmp_path / "global_step2"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"files": {}}))
    (folder / "config.yml").write_text("precision: fp32\n")
    (tmp_path / "latest").write_text("global_step2")
    # the engine is never reached: the check comes first
    with pytest.raises(CheckpointError, match="saved with precision fp32 and this run uses bfloat16.*no_load_optim: true"):
        load_checkpoint(None, str(tmp_path), rank=0, precision="bfloat16")
    with pytest.raises(AttributeError):  # same precision, or no optimizer state: it goes on to the engine
        load_checkpoint(None, str(tmp_path), rank=0, precision="fp32")
    with pytest.raises(AttributeError):
        load_checkpoint(None, str(tmp_path), rank=0, precision="bfloat16", load_optimizer=False)


def test_rewriting_a_step_an_earlier_pass_saved_keeps_latest_loadable(tmp_path):
    # resumed with `iteration: 3` into its own folder, a run reaches step 6 again; a crash while it
    # rewrites global_step6 must leave `latest` naming a complete checkpoint
    from megatron.checkpointing.checkpoint import resolve_tag, save_checkpoint, verify_checkpoint

    for step in (3, 6):
        folder = tmp_path / f"global_step{step}"
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"x" * step)
        (folder / "manifest.json").write_text(json.dumps({"files": {"model.pt": step}}))
    (tmp_path / "latest").write_text("global_step6")

    class Crashes:
        def save_checkpoint(self, *args, **kwargs):
            raise KeyboardInterrupt("killed mid-save")

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(Crashes(), str(tmp_path), 6, client_state={}, config_yaml="", rank=0)
    assert resolve_tag(str(tmp_path)) == "global_step3"
    verify_checkpoint(tmp_path / "global_step3")
    assert not (tmp_path / "global_step6" / "manifest.json").exists()  # what is left there is an unfinished save


def test_a_save_that_cannot_write_names_the_folder_and_what_latest_still_names(tmp_path):
    from megatron.checkpointing.checkpoint import CheckpointError, save_checkpoint

    (tmp_path / "latest").write_text("global_step3")

    class DiskFull:  # what torch.save says when the folder could not be made (read-only or full disk)
        def save_checkpoint(self, save, tag, **kwargs):
            raise RuntimeError(f"Parent directory {save}/{tag} does not exist.")

    with pytest.raises(CheckpointError, match="cannot write checkpoint .*global_step6.*writable.*`latest` still names global_step3"):
        save_checkpoint(DiskFull(), str(tmp_path), 6, client_state={}, config_yaml="", rank=0)


def test_separator_ids_of_another_tokenizer_are_warned_about(tmp_path, corpus):
    # 'A', 'B', 'C' under the character tokenizer: not separators, as another tokenizer's ids would not be.
    cfg = make_config(tmp_path, corpus, train_iters=1, separator_token_ids=[65, 66, 67])
    proc = run(tmp_path, cfg, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "warning: separator_token_ids are mostly not separators under this tokenizer (65='A'" in out
    assert f"`separator_token_ids: {CHAR_SEPARATORS}`" in out
    # The run's own separators draw no warning.
    quiet = run(tmp_path, make_config(tmp_path, corpus, "quiet.yml", train_iters=1), check=False)
    assert quiet.returncode == 0 and "mostly not separators" not in quiet.stdout + quiet.stderr


def test_resume_with_a_longer_eval_interval_sizes_the_validation_set_for_it(tmp_path, corpus):
    # The first run evaluated every step; the resumed one rarely, with a fresh dataset cache: sized by its
    # own settings alone, its validation set would hold fewer samples than the first run consumed.
    ck = tmp_path / "ck"
    first = make_config(tmp_path, corpus, "a.yml", train_iters=6, eval_interval=1, eval_iters=3, save=str(ck),
                        load=str(ck), data_cache_path=str(tmp_path / "cache_a"))
    run(tmp_path, first)
    second = make_config(tmp_path, corpus, "b.yml", train_iters=8, eval_interval=8, eval_iters=3, save=str(ck),
                         load=str(ck), data_cache_path=str(tmp_path / "cache_b"))
    resumed = run(tmp_path, second)
    assert resumed["start"] == 6 and len(resumed["losses"]) == 2


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_offload_steps_the_cpu_adam_like_the_device_one_and_resumes_exactly(tmp_path, corpus, stage):
    """offload_optimizer: {device: cpu} keeps the optimizer state in host memory, stepped by DeepSpeed's CPU Adam."""
    ck = tmp_path / "ck"
    zero = {"stage": stage, "offload_optimizer": {"device": "cpu"}}
    plain = run(tmp_path, make_config(tmp_path, corpus, "plain.yml", train_iters=6, zero_optimization={"stage": stage}), nproc=2)
    common = dict(train_iters=6, zero_optimization=zero, save=str(ck), load=str(ck), checkpoint_factor=3)
    first = run(tmp_path, make_config(tmp_path, corpus, "a.yml", **{**common, "exit_interval": 3}), nproc=2)
    assert first["offload"] and first["optimizer"] == "DeepSpeedCPUAdam" and not plain["offload"]
    assert first["losses"] == pytest.approx(plain["losses"][:3], rel=1e-5)  # the same Adam, on the host
    resumed = run(tmp_path, make_config(tmp_path, corpus, "b.yml", **common), nproc=2)
    assert resumed["start"] == 3
    whole = run(tmp_path, make_config(tmp_path, corpus, "c.yml", **{**common, "save": str(tmp_path / "w"), "load": None}), nproc=2)
    assert resumed["losses"] == whole["losses"][3:]  # exact resume, optimizer state included
    assert whole["losses"] == pytest.approx(plain["losses"], rel=1e-4)


def test_a_finished_run_reports_the_test_split(tmp_path, corpus):
    done = run(tmp_path, make_config(tmp_path, corpus, train_iters=3, split="80,10,10", eval_iters=2), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"\[test\] iter 3 \| loss [\d.]+ \| ppl [\d.]+", done.stdout), done.stdout[-2000:]
    stopped = run(tmp_path, make_config(tmp_path, corpus, "b.yml", train_iters=6, exit_interval=3, split="80,10,10",
                                        save=str(tmp_path / "ck")), check=False)
    assert stopped.returncode == 0 and "[test]" not in stopped.stdout  # not finished: no test yet


def test_zero3_trains_from_a_checkpoint_saved_without_zero3(tmp_path, corpus):
    """ZeRO-3 reads only its own partitioned files; a stage 0-2 (or converted, or resharded) checkpoint loads into
    the module before DeepSpeed partitions it."""
    ck = tmp_path / "ck"
    run(tmp_path, make_config(tmp_path, corpus, "a.yml", train_iters=3, zero_optimization={"stage": 1}, save=str(ck)))
    common = dict(train_iters=5, load=str(ck), no_load_optim=True, save=str(tmp_path / "out"))
    stage1 = run(tmp_path, make_config(tmp_path, corpus, "b.yml", zero_optimization={"stage": 1}, **common))
    stage3 = run(tmp_path, make_config(tmp_path, corpus, "c.yml", zero_optimization={"stage": 3},
                                       **{**common, "save": str(tmp_path / "out3")}))
    assert stage1["start"] == stage3["start"] == 3
    assert stage3["losses"] == pytest.approx(stage1["losses"], rel=1e-5)  # same weights, step, schedule, data
    refused = run(tmp_path, make_config(tmp_path, corpus, "d.yml", zero_optimization={"stage": 3},
                                        **{**common, "no_load_optim": False}), check=False)
    assert refused.returncode != 0 and "optimizer state in a format ZeRO-3 cannot read" in refused.stderr


def test_a_checkpoint_of_another_model_parallel_layout_is_refused(tmp_path):
    from megatron.checkpointing.checkpoint import _layout_problem

    folder = tmp_path / "global_step4"
    folder.mkdir()
    for r in range(2):
        (folder / f"mp_rank_{r:02d}_model_states.pt").write_bytes(b"")
    assert _layout_problem(folder, 2, 1) is None
    assert "saved with 2 model-parallel rank(s) and this run has model_parallel_size 1" in _layout_problem(folder, 1, 1)
    assert "tools/reshard_checkpoint.py" in _layout_problem(folder, 1, 1)
    (folder / "layer_00-model_00-model_states.pt").write_bytes(b"")
    assert _layout_problem(folder, 1, 2) is None
    assert "as pipeline stages" in _layout_problem(folder, 2, 1)


def write_label_datasets(folder: Path, corpus: str) -> list:
    """Label datasets for `corpus`: "same" (its own tokens) and "one" (65 everywhere, -100 on each document's
    first quarter); returns the corpus documents."""
    import numpy as np

    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.data.indexed_format import IndexedDatasetWriter

    docs = [d.astype(np.int64) for d in IndexedDataset(corpus)]
    labels = {"same": lambda d: d, "one": lambda d: np.where(np.arange(len(d)) < len(d) // 4, -100, 65)}
    for name, label in labels.items():
        with IndexedDatasetWriter(folder / name, np.int32) as w:
            for d in docs:
                w.add_document(label(d))
            w.finalize()
    return docs


def test_label_datasets_reach_the_last_pipeline_stage(tmp_path, corpus):
    write_label_datasets(tmp_path, corpus)
    common = dict(data_path=None, train_iters=3, pipe_parallel_size=2, gradient_accumulation_steps=2,
                  zero_optimization={"stage": 1}, **{f"{k}_data_paths": [corpus] for k in ("train", "valid", "test")})
    plain = run(tmp_path, make_config(tmp_path, corpus, "plain.yml", **common), nproc=2)["losses"]
    same = run(tmp_path, make_config(tmp_path, corpus, "same.yml", **common, train_label_data_paths=[str(tmp_path / "same")]), nproc=2)
    one = run(tmp_path, make_config(tmp_path, corpus, "one.yml", **common, train_label_data_paths=[str(tmp_path / "one")]), nproc=2)
    assert same["losses"] == plain
    assert one["losses"][-1] < plain[-1] - 0.5, (one["losses"], plain)


def test_label_datasets_train_on_their_targets_only(tmp_path, corpus):
    """train/valid/test_label_data_paths (GPT-NeoX's SFT data): labels equal to the tokens train exactly as without
    them; labels that ask for one token (65) where they are not -100 are learnt far faster than the text."""
    import numpy as np

    from megatron.data.indexed_format import IndexedDatasetWriter

    docs = write_label_datasets(tmp_path, corpus)
    paths = {f"{k}_data_paths": [corpus] for k in ("train", "valid", "test")}
    common = dict(data_path=None, train_iters=4, eval_iters=1, **paths)
    plain = run(tmp_path, make_config(tmp_path, corpus, "plain.yml", **common))["losses"]
    same = run(tmp_path, make_config(tmp_path, corpus, "same.yml", **common,
                                     **{f"{k}_label_data_paths": [str(tmp_path / "same")] for k in ("train", "valid", "test")}))
    assert same["losses"] == plain
    one = run(tmp_path, make_config(tmp_path, corpus, "one.yml", **common, train_label_data_paths=[str(tmp_path / "one")]))
    assert one["losses"][0] == pytest.approx(plain[0], abs=0.1)  # every target is as unlikely at the start
    assert max(one["losses"][-2:]) < plain[-1] - 0.5, (one["losses"], plain)
    # a split without a single target reports nan, not a loss of 0 that would read as perfect
    with IndexedDatasetWriter(tmp_path / "none", np.int32) as w:
        for d in docs:
            w.add_document(np.full(len(d), -100))
        w.finalize()
    none = run(tmp_path, make_config(tmp_path, corpus, "none.yml", **{**common, "train_iters": 2}, eval_interval=1,
                                     valid_label_data_paths=[str(tmp_path / "none")]), check=False)
    assert none.returncode == 0, none.stderr[-3000:]
    assert re.search(r"\[valid\] iter 1 \| loss nan", none.stdout) and re.search(r"\[test\] iter 2 \| loss [\d.]+", none.stdout), none.stdout[-2000:]


@pytest.mark.parametrize("stage", [0, 1])
def test_no_load_optim_continues_from_the_loaded_weights(tmp_path, corpus, stage):
    """A fresh optimizer must start from the checkpoint's weights: under bf16, DeepSpeed's optimizer keeps fp32
    master weights that it does not rebuild from the loaded module by itself at stage 0."""
    common = dict(precision="bfloat16", zero_optimization={"stage": stage}, save=str(tmp_path / "ck"), load=str(tmp_path / "ck"))
    first = run(tmp_path, make_config(tmp_path, corpus, "a.yml", train_iters=6, **common))["losses"]
    again = run(tmp_path, make_config(tmp_path, corpus, "b.yml", train_iters=8, no_load_optim=True, **common))
    assert again["start"] == 6
    # the step after the fresh optimizer's first one is still near where the first run ended, far from the start
    assert again["losses"][1] < first[-1] + 0.2 and again["losses"][1] < first[0] - 0.4, (first, again["losses"])
