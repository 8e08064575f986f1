"""Bad input to the checkpoint readers, generate.py and eval.py: a message saying what is wrong and
how to fix it, never a traceback from deep inside the conversion."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from test_convert_fixtures import LLAMA, ROOT, load_tool, sepllm_checkpoint
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

from megatron.checkpointing.checkpoint import CheckpointError
from megatron.checkpointing.export import checkpoint_folder

convert = load_tool("convert_neox_to_hf")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A SepLLM checkpoint at runs/save/global_step5 and its config."""
    folder = tmp_path_factory.mktemp("bad_input")
    config, _, _ = sepllm_checkpoint(folder, folder / "runs" / "save")
    return folder, config


def test_folder_with_another_iteration_says_so(saved):
    folder, _ = saved
    step = folder / "runs" / "save" / "global_step5"
    assert checkpoint_folder(step, 5) == step
    with pytest.raises(CheckpointError, match="already one checkpoint .*global_step5.* iteration 7"):
        checkpoint_folder(step, 7)


def test_missing_iteration_lists_the_saved_ones(saved):
    folder, _ = saved
    interrupted = folder / "runs" / "save" / "global_step9"  # a save that never wrote its manifest
    interrupted.mkdir()
    try:
        with pytest.raises(CheckpointError, match="no checkpoint for iteration 7; it has global_step5$"):
            checkpoint_folder(folder / "runs" / "save", 7)
    finally:
        interrupted.rmdir()


def test_parent_of_the_save_directory_names_it(saved):
    folder, _ = saved
    with pytest.raises(CheckpointError, match="holds save directories \\(save\\)"):
        checkpoint_folder(folder / "runs")


@pytest.mark.parametrize("wrong", [dict(num_layers=3), dict(hidden_size=64), dict(LLAMA, rotary_pct=1.0, gpt_j_residual=False)], ids=["layers", "width", "llama"])
def test_config_of_another_model_is_refused(saved, tmp_path, wrong):
    folder, config = saved
    other = tmp_path / "other.yml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), **wrong}))
    with pytest.raises(CheckpointError, match="does not match the configured model"):
        convert.main(["--input_dir", str(folder / "runs" / "save"), "--output_dir", str(tmp_path / "hf"),
                      "--config_file", str(other)])
    assert not (tmp_path / "hf").exists()


def test_generate_reports_a_wrong_load_without_traceback(saved, tmp_path):
    folder, config = saved
    gen = tmp_path / "gen.yml"
    gen.write_text(yaml.safe_dump({"load": str(folder / "runs"), "sample_output_file": str(tmp_path / "s.jsonl")}))
    done = subprocess.run([sys.executable, "generate.py", str(config), str(gen)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "generate.py:" in done.stderr and "holds save directories (save)" in done.stderr


def test_eval_refuses_an_unknown_task_before_loading_the_model(saved, tmp_path):
    pytest.importorskip("lm_eval")
    import eval as eval_script

    folder, config = saved
    missing = tmp_path / "missing.yml"
    missing.write_text(yaml.safe_dump({"load": str(folder / "runs" / "save"), "iteration": 99}))
    # The checkpoint named is missing too: the task error must come first, before any model loads.
    with pytest.raises(ValueError, match="unknown lm-eval task.*nosuchtask.*lm-eval list tasks"):
        eval_script.main([str(config), str(missing), "--eval_tasks", "nosuchtask"])


def test_eval_explains_an_unreachable_dataset(saved, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    import eval as eval_script
    from megatron.checkpointing.export import inference_model
    from megatron.neox_arguments import NeoXArgs

    _, config = saved
    model, tokenizer = inference_model(NeoXArgs.from_files([str(config)]))

    def offline(**_):
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    with pytest.raises(ConnectionError, match="lambada_openai.*HF_DATASETS_OFFLINE=1.*--include_path"):
        eval_script.evaluate(model, tokenizer, ["lambada_openai"], task_manager=object())  # not read: simple_evaluate is patched


def test_resume_with_another_model_names_the_checkpoint(saved):
    import deepspeed

    from megatron.checkpointing.checkpoint import load_checkpoint
    from megatron.model import GPTModel
    from megatron.neox_arguments import NeoXArgs
    from test_convert_fixtures import VOCAB_ROWS

    folder, config = saved
    args = NeoXArgs.from_files([str(config)])
    args.model.num_layers = 3
    engine, _, _, _ = deepspeed.initialize(model=GPTModel(args.model, args.sepllm, VOCAB_ROWS),
                                           config={"train_micro_batch_size_per_gpu": 1}, dist_init_required=False)
    with pytest.raises(CheckpointError, match="global_step5 does not match the configured model .*config.yml"):
        load_checkpoint(engine, str(folder / "runs" / "save"), rank=0)


def test_overwrite_never_replaces_a_file(saved, tmp_path):
    folder, _ = saved
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(FileExistsError, match="is a file"):
        convert.main(["--input_dir", str(folder / "runs" / "save"), "--output_dir", str(notes), "--overwrite"])
    assert notes.read_text() == "keep me"


def test_overwrite_never_deletes_the_input(saved):
    folder, _ = saved
    save = folder / "runs" / "save"
    with pytest.raises(ValueError, match="holds the input"):
        convert.main(["--input_dir", str(save), "--output_dir", str(folder / "runs"), "--overwrite"])
    with pytest.raises(ValueError, match="holds the input"):
        load_tool("convert_hf_to_neox").main(["--hf_model", str(save), "--output_dir", str(save), "--overwrite"])
    assert checkpoint_folder(save).name == "global_step5"


def _copy_checkpoint(saved, tmp_path):
    import shutil

    folder, _ = saved
    save = tmp_path / "save"
    shutil.copytree(folder / "runs" / "save", save)
    return save


def test_damaged_latest_manifest_and_weights_are_named(saved, tmp_path):
    from megatron.checkpointing.checkpoint import read_torch_file, resolve_tag, verify_checkpoint

    save = _copy_checkpoint(saved, tmp_path)
    (save / "latest").write_text("")
    with pytest.raises(CheckpointError, match="should name a checkpoint folder like global_step100.*global_step5"):
        resolve_tag(str(save))
    (save / "latest").write_text("global_step5")
    step = save / "global_step5"
    manifest = (step / "manifest.json").read_text()
    (step / "manifest.json").write_text(manifest[:-20])
    with pytest.raises(CheckpointError, match="manifest.json is not a valid manifest"):
        verify_checkpoint(step)
    (step / "manifest.json").write_text(manifest)
    weights = step / "mp_rank_00_model_states.pt"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size: the manifest's checksum shows the damage
    with pytest.raises(CheckpointError, match="the bytes of mp_rank_00_model_states.pt changed after the save"):
        verify_checkpoint(step)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt cannot be read .* it is damaged"):
        read_torch_file(weights)


def test_outputs_are_checked_before_any_work(saved, tmp_path):
    from megatron.neox_arguments import NeoXArgs

    folder, config = saved
    # a new run saving over another run's checkpoints, without loading them
    other = NeoXArgs.from_files([config])
    other.checkpoint.load = None
    with pytest.raises(Exception, match="holds another run's checkpoints \\(latest global_step5\\)"):
        other.validate_for("train")
    (tmp_path / "a_file").write_text("x")
    other.checkpoint.save, other.logging.log_dir = str(tmp_path / "a_file"), str(tmp_path / "a_file" / "logs")
    with pytest.raises(Exception) as info:
        other.validate_for("train")
    assert "`save: " in str(info.value) and "is a file; give a folder" in str(info.value)
    assert "cannot be created: " in str(info.value)
    # generate: prompts and where the samples go
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n \n")
    gen = NeoXArgs.from_files([config])
    gen.generation.text_gen_type, gen.generation.sample_input_file = "input-file", str(prompts)
    gen.generation.sample_output_file = str(tmp_path / "missing" / "out.jsonl")
    with pytest.raises(Exception) as info:
        gen.validate_for("generate")
    assert "holds no prompt" in str(info.value) and "does not exist" in str(info.value)
    ev = NeoXArgs.from_files([config])
    ev.generation.eval_results_prefix = str(tmp_path / "missing" / "run")
    with pytest.raises(Exception, match="eval_results_prefix: .*its folder .* does not exist"):
        ev.validate_for("eval")


def test_eval_refuses_bad_numbers(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for flags, message in ((["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
                           (["--num_fewshot", "-2"], "--num_fewshot must be >= 0, got -2"),
                           (["--limit", "-1"], "--limit must be > 0")):
        with pytest.raises(SystemExit) as exit_info:
            module.parse_cli(["cfg.yml", *flags])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_reshard_refuses_to_move_latest_back(saved, tmp_path):
    from megatron.parallel.layout import Layout
    from megatron.parallel.reshard import ReshardError, reshard

    folder, _ = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "global_step9").mkdir()
    (out / "latest").write_text("global_step9")
    with pytest.raises(ReshardError, match="names global_step9, later than global_step5"):
        reshard(folder / "runs" / "save" / "global_step5", out, Layout(tp=1, pp=1, dp=1))


def test_checkpoints_without_latest_are_not_started_over(saved, tmp_path):
    from megatron.checkpointing.checkpoint import resolve_tag

    save = _copy_checkpoint(saved, tmp_path)
    (save / "latest").unlink()
    with pytest.raises(CheckpointError, match="holds checkpoints \\(global_step5\\) but no `latest`"):
        resolve_tag(str(save))
    assert resolve_tag(str(tmp_path / "empty")) is None
