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
    with pytest.raises(CheckpointError, match="no checkpoint for iteration 7; it has global_step5"):
        checkpoint_folder(folder / "runs" / "save", 7)


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
