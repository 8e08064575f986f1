"""Change the tensor / pipeline / data-parallel layout of a training checkpoint.

    python tools/reshard_checkpoint.py SAVE_DIR_OR_FOLDER OUT_DIR \\
        --model_parallel_size 2 --pipe_parallel_size 2 --data_parallel_size 2

Reads a checkpoint saved under any layout (any ZeRO stage when there is no model parallelism)
and writes OUT_DIR/global_stepN for the new one, with `latest` pointing at it. Weights, learning-
rate schedule, step counters and the data position carry over, and the optimizer too (Adam's
moments and step; fp32 master weights) for ZeRO stage 1/2 checkpoints (fp32, fp16, bf16; bf16
ZeRO-1 runs with DeepSpeed's BF16_Optimizer) and for fp32-parameter checkpoints without ZeRO on
one model-parallel rank (torch_autocast or fp32 runs at stage 0, e.g. torch_autocast on one GPU,
which moves to N data-parallel GPUs and back). Where it cannot carry the optimizer (ZeRO-3, other
stage-0 formats) the tool says so (see megatron/parallel/reshard.py). It ends by printing the
settings to put on top of the run's config to resume: `load: OUT_DIR`, the new layout's sizes,
make_vocab_size_divisible_by when the tensor-parallel size would pad the vocabulary differently,
and `no_load_optim: true` when the optimizer was not carried over.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint save directory (follows `latest`) or one global_stepN folder")
    parser.add_argument("output", help="save directory to write the resharded checkpoint into")
    parser.add_argument("--model_parallel_size", "--model-parallel-size", type=int, default=1)
    parser.add_argument("--pipe_parallel_size", "--pipe-parallel-size", type=int, default=1)
    parser.add_argument("--data_parallel_size", "--data-parallel-size", type=int, default=1,
                        help="data-parallel ranks of the run that will load it")
    parser.add_argument("--iteration", type=int, default=None, help="load global_stepN instead of `latest`")
    parser.add_argument("--config_file", nargs="*", default=None,
                        help="the training YAML files, when the checkpoint has no config.yml")
    cli = parser.parse_args(argv)

    from megatron.checkpointing.checkpoint import CheckpointError
    from megatron.neox_arguments.errors import ConfigError
    from megatron.parallel.layout import Layout, pipeline_stages
    from megatron.parallel.reshard import MANIFEST, ReshardError, reshard

    sizes = (cli.model_parallel_size, cli.pipe_parallel_size, cli.data_parallel_size)
    if min(sizes) < 1 and not (cli.pipe_parallel_size == 0 and min(sizes[0], sizes[2]) >= 1):
        parser.error("the parallel sizes must be >= 1")
    layout = Layout(tp=cli.model_parallel_size, pp=pipeline_stages(cli.pipe_parallel_size), dp=cli.data_parallel_size)
    source = Path(cli.source)
    try:
        if cli.iteration is not None:  # a save directory's step; a step folder given with another step is named
            from megatron.checkpointing.export import checkpoint_folder

            source = checkpoint_folder(source, cli.iteration)
        folder, notices = reshard(source, Path(cli.output), layout, config_files=cli.config_file)
    except (ReshardError, CheckpointError, ConfigError) as exc:
        print(f"reshard_checkpoint: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output folder that cannot be made or written
        print(f"reshard_checkpoint: cannot write {cli.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for notice in notices:
        print(f"reshard_checkpoint notice: {notice}")
    note = json.loads((folder / MANIFEST).read_text())["resharded"]
    carried = "optimizer state included" if note["optimizer"] else "the optimizer state was not carried over"
    settings = {"load": cli.output, **note["resume_settings"]}
    print(f"wrote {folder} for {layout} ({carried}); resume it on {layout.world} ranks with these settings "
          "on top of the run's config:")
    for key, value in settings.items():  # JSON is YAML, one line per key
        print(f"  {key}: {value if isinstance(value, str) else json.dumps(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
