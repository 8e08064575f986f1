"""Derived values and cross-key checks: precision, batch sizes, data, optimizer, DeepSpeed config, readiness."""
from __future__ import annotations

import pytest
import torch

from megatron.neox_arguments import ConfigError, NeoXArgs, distributed_env, resolve_backend
from megatron.neox_arguments.launcher import LauncherArgs
from megatron.neox_arguments.optimizer import OPTIMIZER_PARAMS, OPTIMIZER_TYPES

SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32}


def load(**settings) -> NeoXArgs:
    return NeoXArgs.from_dict({**SHAPE, **settings}, source="t.yml")


def error(**settings) -> str:
    with pytest.raises(ConfigError) as info:
        load(**settings)
    return str(info.value)


def test_precision_is_derived_from_the_deepspeed_sections():
    assert load().precision.precision == "fp32"
    assert load(fp16={"enabled": True}).precision.dtype == torch.float16
    # GPT-NeoX's pythia/1B.yml spells bf16 as an fp16 section of type bfloat16.
    assert load(fp16={"enabled": True, "type": "bfloat16"}).precision.precision == "bfloat16"
    assert load(precision="bfloat16").precision.dtype == torch.bfloat16
    message = error(precision="fp32", fp16={"enabled": True})
    assert "`precision: 'fp32'` (set in t.yml) conflicts with `fp16" in message and "set fp16.enabled: false" in message
    assert "are both enabled" in error(fp16={"enabled": True}, bf16={"enabled": True})
    assert "needs an `enabled` key" in error(fp16={"loss_scale": 0})


def test_batch_sizes_follow_gpt_neox_derivation():
    args = load(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2)
    assert args.training.batch_sizes(3) == (24, 4, 2)
    args = load(train_batch_size=64, train_micro_batch_size_per_gpu=4)
    assert args.training.batch_sizes(8) == (64, 4, 2)
    assert load(train_batch_size=64).training.batch_sizes(8) == (64, 8, 1)
    with pytest.raises(ConfigError, match="must equal train_micro_batch_size_per_gpu=4 x gradient_accumulation_steps=1 x data-parallel ranks=3"):
        load(train_batch_size=64, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1).training.batch_sizes(3)
    with pytest.raises(ConfigError, match="set train_micro_batch_size_per_gpu"):
        load().training.batch_sizes(1)
    assert "with `global_num_gpus: 3`" in error(train_batch_size=64, train_micro_batch_size_per_gpu=4, global_num_gpus=3)


def test_deepspeed_config_is_accepted_by_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    args = load(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=3, gradient_clipping=0.5, fp32_allreduce=True,
                fp16={"fp16": True, "enabled": True, "loss_scale": 0, "initial_scale_power": 12},
                zero_optimization={"stage": 1, "cpu_offload": False}, steps_per_print=7,
                deepspeed_extra_args={"comms_logger": {"enabled": False}})
    config = args.deepspeed_config(dp_world_size=1)
    assert config["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 12}
    assert config["communication_data_type"] == "fp32" and "optimizer" not in config
    parsed = DeepSpeedConfig(config)
    assert (parsed.train_batch_size, parsed.gradient_accumulation_steps, parsed.zero_optimization_stage) == (6, 3, 1)
    bf16 = load(train_micro_batch_size_per_gpu=1, precision="bfloat16").deepspeed_config(2)
    assert bf16["bf16"] == {"enabled": True} and "fp16" not in bf16
    assert "set `fp16` at the top level instead" in error(deepspeed_extra_args={"fp16": {"enabled": True}})


def test_optimizer_and_zero_defaults_are_filled_in():
    args = load()
    assert args.optimizer.optimizer == {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8}}
    assert args.optimizer.zero_stage == 0 and args.optimizer.zero_reduce_bucket_size == 500_000_000
    assert load(optimizer={"type": "Adam", "params": {}}).optimizer.optimizer["params"]["lr"] == 0.001
    assert "optimizer type 'OneBitAdam' is not supported yet" in error(optimizer={"type": "OneBitAdam", "params": {"lr": 1e-3}})
    assert "params.lr must be a positive number" in error(optimizer={"type": "Adam", "params": {"lr": -1}})
    assert "stage must be 0, 1, 2 or 3" in error(zero_optimization={"stage": 4})
    # ZeRO-Offload: the offload setting picks DeepSpeed's CPU Adam; GPT-NeoX's cpu_adam type points there
    assert load(zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}}).optimizer.offload_device == "cpu"
    assert "write offload_optimizer: {device: cpu}" in error(zero_optimization={"stage": 2, "cpu_offload": True})
    assert "needs ZeRO stage 1, 2 or 3" in error(zero_optimization={"stage": 0, "offload_optimizer": {"device": "cpu"}})
    assert "to nvme is not supported" in error(zero_optimization={"stage": 2, "offload_optimizer": {"device": "nvme"}})
    assert "optimizer type must be Adam or AdamW, not SGD" in error(
        optimizer={"type": "SGD", "params": {"lr": 0.1}}, zero_optimization={"stage": 2, "offload_optimizer": {"device": "cpu"}})
    assert "GPT-NeoX's ZeRO-Offload optimizer; write type: Adam" in error(optimizer={"type": "cpu_adam", "params": {"lr": 0.1}})
    assert load(zero_optimization={"stage": 3, "offload_param": {"device": "cpu"}}).optimizer.zero_stage == 3
    assert "params.weight_decay 0.01 is not the one applied" in error(optimizer={"type": "Adam", "params": {"weight_decay": 0.01}})
    assert "SGD takes no parameter 'betas'; its params are lr, momentum" in error(
        optimizer={"type": "SGD", "params": {"lr": 1e-3, "betas": [0.9, 0.95]}})


@pytest.mark.parametrize("kind", OPTIMIZER_TYPES)
def test_every_accepted_optimizer_type_builds_with_every_parameter_it_accepts(kind):
    from megatron.training.optimizer import build_optimizer

    example = {"lr": 0.01, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False, "momentum": 0.9,
               "dampening": 0.0, "nesterov": True}
    spec = {"type": kind, "params": {key: example[key] for key in OPTIMIZER_PARAMS[kind]}}
    args = load(optimizer=spec, weight_decay=0.1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, args.optimizer.optimizer, args.optimizer.weight_decay)
    assert opt.param_groups[0]["lr"] == 0.01
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # none on biases and norms
    model(torch.randn(2, 4)).sum().backward()
    opt.step()


def test_learning_rate_schedule_checks():
    assert "must not exceed the peak learning rate" in error(min_lr=0.1)
    assert "contradict each other" in error(override_lr_scheduler=True, use_checkpoint_lr_scheduler=True)
    assert "must be in [0, 1]" in error(warmup=1.5)
    assert load(train_iters=100).lr.decay_iters(100) == 100


def test_data_paths_are_either_one_prefix_or_three_lists():
    assert "give either `data_path: 'x'` (set in t.yml) or train/valid/test_data_paths, not both" in error(
        data_path="x", train_data_paths=["a"], valid_data_paths=["b"], test_data_paths=["c"])
    assert "also need valid_data_paths, test_data_paths" in error(train_data_paths=["a"])
    assert "needs one weight per entry" in error(train_data_paths=["a", "b"], valid_data_paths=["b"], test_data_paths=["c"], train_data_weights=[1.0])
    assert "train,valid,test proportions" in error(split="90,x,5")
    three = dict(train_data_paths=["a", "b"], valid_data_paths=["b"], test_data_paths=["c"])
    assert "needs one label dataset per entry of train_data_paths (2), in the same order" in error(**three, train_label_data_paths=["la"])
    assert "label datasets do not pair with data_path" in error(data_path="x", valid_label_data_paths=["lb"])
    assert load(**three, train_label_data_paths=["la", "lb"], test_label_data_paths=["lc"]).data.train_label_data_paths == ["la", "lb"]
    assert load(split="949,50,1").data.split_fractions() == pytest.approx((0.949, 0.05, 0.001))


def test_model_shape_checks():
    assert "must be divisible by" in error(hidden_size=65)
    assert "must be a multiple of `num_kv_heads: 3`" in error(num_kv_heads=3)
    assert "describes 3 layers" in error(attention_config=[[["global"], 3]])
    assert load(attention_config=[[["flash", "global"], "all"]]).model.attention_config
    assert "max_position_embeddings" in error(max_position_embeddings=16)
    # head size 32: 0.1 rotates 3 dimensions, which rotary embeddings cannot (the model would refuse it)
    assert "rotates 3 dimensions; it must be a positive even number (rotary_pct: 0.0625 rotates 2)" in error(
        pos_emb="rotary", rotary_pct=0.1)
    assert "need max_position_embeddings >= seq_length + offset = 34" in error(pos_emb="learned", opt_pos_emb_offset=2)
    assert load(pos_emb="learned", opt_pos_emb_offset=2, max_position_embeddings=34).model.opt_pos_emb_offset == 2


def test_optimizer_parameter_values_are_checked():
    sgd = {"type": "SGD", "params": {"lr": 0.1}}
    assert "params.momentum must be a number >= 0, got -1" in error(optimizer={**sgd, "params": {"lr": 0.1, "momentum": -1}})
    assert "params.nesterov needs momentum > 0 and dampening 0" in error(optimizer={**sgd, "params": {"lr": 0.1, "nesterov": True}})
    assert "params.eps must be a positive number" in error(optimizer={"type": "Adam", "params": {"eps": -1}})
    assert "params.amsgrad must be true or false, got 'yes'" in error(optimizer={"type": "Adam", "params": {"amsgrad": "yes"}})


def test_launcher_conflicts():
    assert "mutually exclusive" in error(include="a", exclude="b")
    assert "cannot be combined with include/exclude" in error(include="a", num_nodes=2)
    assert "set precision: bfloat16 at the top level" in error(deepspeed_extra_args={"bfloat16": {"enabled": True}})
    assert "comes from the lr_* keys" in error(deepspeed_extra_args={"scheduler": {"type": "WarmupLR"}})
    assert "did you mean `train_micro_batch_size_per_gpu`?" in error(deepspeed_extra_args={"train_micro_batch_size": 4})
    assert load(deepspeed_extra_args={"flops_profiler": {"enabled": False}}).launcher.deepspeed_extra_args
    # keys inside its sections too: the flops profiler drops a misspelt one without a word
    assert "`flops_profiler.profile_stepp` is not a key DeepSpeed reads; did you mean `profile_step`?" in error(
        deepspeed_extra_args={"flops_profiler": {"enabled": True, "profile_stepp": 1}})
    assert "`wandb.projct` is not a key DeepSpeed reads; did you mean `project`?" in error(
        deepspeed_extra_args={"wandb": {"enabled": False, "projct": "x"}})
    assert "must be 'parameters', 'uniform' or 'type:REGEX'" in error(pipe_partition_method="unifrom")
    assert "is not a regular expression" in error(pipe_partition_method="type:transformer(")
    assert load(pipe_partition_method="Uniform").parallel.pipe_partition_method == "Uniform"
    if not torch.distributed.is_mpi_available():
        assert "this torch is built without MPI" in error(distributed_backend="mpi")


def test_generation_mode_is_derived():
    assert load().generation.kind == "unconditional"
    assert load(sample_input_file="p.txt").generation.kind == "input-file"
    assert load(sample_input_file="p.txt", text_gen_type="unconditional").generation.kind == "unconditional"
    assert "needs sample_input_file" in error(text_gen_type="input-file")


def test_resolved_config_does_not_pin_the_generation_mode(tmp_path):
    # a training run's resolved config.yml, reused for generation with a prompt file on top
    resolved = tmp_path / "config.yml"
    resolved.write_text(load().to_yaml())
    prompts = tmp_path / "gen.yml"
    prompts.write_text("sample_input_file: p.txt\n")
    assert NeoXArgs.from_files([str(resolved), str(prompts)]).generation.kind == "input-file"


def test_quoted_precision_switches_are_refused():
    # DeepSpeed's pydantic reads "no" as false, Python's truthiness as true: neither may decide
    assert "`enabled` must be true or false (unquoted), got 'no'" in error(bf16={"enabled": "no"})
    assert "`enabled` must be true or false (unquoted), got 'false'" in error(fp16={"enabled": "false"})
    assert load(bf16={"enabled": False}).precision.precision == "fp32"


def test_optimizer_mapping_keys_are_checked():
    assert "unknown key 'parms'; did you mean `params`?" in error(optimizer={"type": "Adam", "parms": {"lr": 6e-4}})
    assert "weight_decay is a top-level key" in error(optimizer={"type": "Adam", "params": {"lr": 6e-4}, "weight-decay": 0.1})


def test_validate_for_training_names_what_is_missing(tmp_path):
    args = load(tokenizer_type="HFTokenizer", vocab_file=str(tmp_path / "missing.json"), save="ckpt")
    with pytest.raises(ConfigError) as info:
        args.validate_for("train")
    message = str(info.value)
    for needle in ("`train_iters` is not set", "set `train_micro_batch_size_per_gpu`", "no training data", "missing.json` does not exist",
                   "neither checkpoint_factor nor extra_save_iters"):
        assert needle in message
    vocab = tmp_path / "tok.json"
    vocab.write_text("{}")
    for suffix in (".bin", ".idx"):  # readiness checks that the pair exists, not its contents
        (tmp_path / f"d{suffix}").write_bytes(b"")
    ready = load(tokenizer_type="HFTokenizer", vocab_file=str(vocab), train_iters=3, train_micro_batch_size_per_gpu=1, data_path=str(tmp_path / "d"))
    ready.validate_for("train")
    with pytest.raises(ConfigError, match="generate needs `load`"):
        ready.validate_for("generate")


def test_finetune_into_the_folder_it_loads_from_is_refused(tmp_path):
    vocab = tmp_path / "tok.json"
    vocab.write_text("{}")
    for suffix in (".bin", ".idx"):
        (tmp_path / f"d{suffix}").write_bytes(b"")
    ck = tmp_path / "ck"
    (ck / "global_step6").mkdir(parents=True)
    (ck / "global_step6" / "manifest.json").write_text("{}")
    common = dict(tokenizer_type="HFTokenizer", vocab_file=str(vocab), train_iters=3, train_micro_batch_size_per_gpu=1,
                  data_path=str(tmp_path / "d"), load=str(ck), checkpoint_factor=3)
    with pytest.raises(ConfigError, match="would replace the checkpoints it starts from \\(global_step6\\)"):
        load(**common, save=str(ck), finetune=True).validate_for("train")
    load(**common, save=str(ck)).validate_for("train")  # resuming it is fine
    load(**common, save=str(tmp_path / "new"), finetune=True).validate_for("train")


def test_distributed_env_reads_the_launcher_variables():
    assert distributed_env(environ={}) == distributed_env(environ={"RANK": "0", "WORLD_SIZE": "1"})
    env = distributed_env(environ={"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port, env.is_main) == (3, 1, 4, "10.0.0.1", 1234, False)
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    assert distributed_env(environ=slurm).world_size == 1  # srun variables only count when the launcher uses srun
    env = distributed_env(LauncherArgs(launcher="slurm", master_addr="node1"), environ=slurm)
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.master_addr) == (5, 1, 8, 4, "node1")
    assert distributed_env(LauncherArgs(deepspeed_mpi=True), environ={"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}).rank == 2
    with pytest.raises(ValueError, match="outside 0..1"):
        distributed_env(environ={"RANK": "2", "WORLD_SIZE": "2"})


def test_backend_falls_back_to_gloo_without_cuda():
    assert resolve_backend("nccl", cuda_available=False) == "gloo"
    assert resolve_backend("nccl", cuda_available=True) == "nccl"
    assert resolve_backend("gloo", cuda_available=True) == "gloo"


def test_torch_compile_with_pipeline_parallelism_is_refused_before_launch():
    assert "`torch_compile: true` (set in t.yml) is supported without pipeline parallelism only" in error(
        torch_compile=True, pipe_parallel_size=2, zero_optimization={"stage": 1})
    assert load(torch_compile=True, model_parallel_size=2).training.torch_compile is True
    assert load(torch_compile=None, pipe_parallel_size=2, zero_optimization={"stage": 1}).training.torch_compile is None


def test_torch_autocast_combinations_are_refused_at_load():
    assert load(torch_autocast=True, precision="bfloat16").precision.torch_autocast is True
    message = error(torch_autocast=True, precision="bfloat16", model_parallel_size=2)
    assert "`torch_autocast: true` (set in t.yml): torch_autocast is supported without tensor or pipeline" in message
    assert "but precision is fp32; set precision: bfloat16" in error(torch_autocast=True)
    assert "supports ZeRO stages" in error(torch_autocast=True, precision="bfloat16", zero_optimization={"stage": 3})


TRAIN_SHAPE = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "seq_length": 32, "train_iters": 1,
         "train_micro_batch_size_per_gpu": 1, "tokenizer_type": "CharLevelTokenizer"}


def train_problem(**data) -> str:
    with pytest.raises(ConfigError) as info:
        NeoXArgs.from_dict({**TRAIN_SHAPE, **data}).validate_for("train")
    return str(info.value)


@pytest.fixture
def dataset(tmp_path):
    prefix = tmp_path / "corpus_text_document"
    for suffix in (".bin", ".idx"):
        prefix.with_name(prefix.name + suffix).write_bytes(b"")
    return prefix


def test_missing_prefix_is_named_with_the_fix(tmp_path):
    message = train_problem(data_path=str(tmp_path / "nowhere"))
    assert "`data_path` entry" in message and "nowhere.bin and" in message and "tools/preprocess_data.py" in message


def test_prefix_with_extension_suggests_the_prefix(dataset):
    message = train_problem(data_path=f"{dataset}.bin")
    assert f"give the prefix without the extension: `data_path: {dataset}`" in message


def test_input_name_suggests_the_preprocessed_prefix(dataset):
    message = train_problem(data_path=str(dataset.parent / "corpus"))
    assert f"did you mean `data_path: {dataset}`?" in message


def test_folder_suggests_the_dataset_inside(dataset):
    assert f"did you mean `data_path: {dataset}`?" in train_problem(data_path=str(dataset.parent))


def test_each_blend_entry_is_checked(dataset, tmp_path):
    message = train_problem(train_data_paths=[str(dataset), str(tmp_path / "b")], valid_data_paths=[str(dataset)],
                            test_data_paths=[str(dataset)])
    assert message.count("not found") == 1 and "`train_data_paths` entry" in message


def test_existing_pair_is_ready(dataset):
    NeoXArgs.from_dict({**TRAIN_SHAPE, "data_path": str(dataset)}).validate_for("train")


def test_torch_compile_mode_choices_and_cuda_graph_limits():
    assert load(torch_compile_mode="reduce-overhead", train_micro_batch_size_per_gpu=4).training.torch_compile_mode == "reduce-overhead"
    assert "use one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs" in error(torch_compile_mode="fast")
    # gradient accumulation works (megatron.parallel.compile.own_gradients copies gradients out of graph memory)
    load(torch_compile_mode="reduce-overhead", train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2)
    assert "model_parallel_size 1 only (got 2)" in error(torch_compile_mode="reduce-overhead", model_parallel_size=2,
                                                          train_micro_batch_size_per_gpu=4, global_num_gpus=2)
    load(torch_compile_mode="max-autotune-no-cudagraphs", train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=2)


def test_generate_and_eval_refuse_what_transformers_cannot_take_before_loading(tmp_path):
    args = load(load=str(tmp_path), pos_emb="alibi", tokenizer_type="CharLevelTokenizer")
    for task in ("generate", "eval"):
        with pytest.raises(ConfigError) as info:
            args.validate_for(task)
        text = str(info.value)
        assert f"{task}.py runs the model through transformers" in text and "pos_emb must be 'rotary'" in text
        assert "tokenizer_type CharLevelTokenizer has no transformers equivalent" in text
