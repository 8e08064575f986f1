"""Checkpoints saved with ZeRO stages 0-3 by 2 data-parallel ranks convert to HF with our logits.

The test starts this file under torchrun (2 CPU processes, gloo); each rank trains a tiny SepLLM
model for two steps under every ZeRO stage and saves it with the trainer's save_checkpoint, and
rank 0 records the engine's logits. Under ZeRO-3 the parameters exist only as shards, so the
converter has to gather them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_convert_fixtures import NEOX, ROOT, VOCAB_ROWS, load_tool, make_tokenizer, sample_ids, sepllm, write_config  # noqa: E402
from test_convert_fixtures import restore_environ  # noqa: F401,E402 (autouse: undoes init_distributed's environment)

STAGES = (0, 1, 2, 3)


def _worker(out: Path) -> None:
    from megatron.parallel.distributed import end_process, init_distributed

    env = init_distributed()
    import deepspeed

    from megatron.checkpointing.checkpoint import save_checkpoint
    from megatron.model import GPTModel
    from megatron.neox_arguments import NeoXArgs

    args = NeoXArgs.from_files([str(out / "cfg.yml")])
    ids = sample_ids(Path(args.tokenizer.vocab_file))
    for stage in STAGES:
        torch.manual_seed(0)
        model = GPTModel(args.model, args.sepllm, VOCAB_ROWS)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
        for step in range(2):
            batch = ids[env.rank:env.rank + 1].roll(step, 1)
            logits = engine(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
            engine.backward(loss)
            engine.step()
        engine.eval()
        with torch.no_grad():
            logits = engine(ids)  # ZeRO-3 gathers the shards for the forward pass
        save_checkpoint(engine, str(out / f"zero{stage}"), 2, client_state={}, config_yaml=args.to_yaml(), rank=env.rank)
        if env.rank == 0:
            torch.save(logits, out / f"logits{stage}.pt")
    end_process(0)


@pytest.fixture(scope="module")
def zero_checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    vocab = make_tokenizer(out / "tok")
    write_config(out / "cfg.yml", vocab, out / "unused", **NEOX, **sepllm(4))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out


@pytest.mark.multiproc
@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_converts_with_our_logits(tmp_path, zero_checkpoints, stage):
    from transformers import AutoModelForCausalLM

    import megatron.checkpointing.sepllm_hf  # noqa: F401  (registers the SepLLM model types)

    folder = zero_checkpoints / f"zero{stage}" / "global_step2"
    shards = sorted(p.name for p in folder.glob("*model_states.pt"))
    assert shards == (["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
                      if stage == 3 else ["mp_rank_00_model_states.pt"])
    out = load_tool("convert_neox_to_hf").main(["--input_dir", str(folder), "--output_dir", str(tmp_path / "hf")])
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(Path(zero_checkpoints / "tok" / "tokenizer.json"))
    with torch.no_grad():
        got = hf(ids).logits
    torch.testing.assert_close(got, torch.load(zero_checkpoints / f"logits{stage}.pt"), rtol=0, atol=1e-4)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
