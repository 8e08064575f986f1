"""Run configuration: typed groups loaded strictly from GPT-NeoX/SepLLM YAML files.

    from megatron.neox_arguments import NeoXArgs, ConfigError
    args = NeoXArgs.from_files(["configs/pythia/160M.yml", "configs/local_setup.yml"])
    args.model.num_layers, args.sepllm.prefill_local_window_size, args.deepspeed_config(dp_world_size=8)
"""
from megatron.neox_arguments.distributed import DistributedEnv, distributed_env, resolve_backend
from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.groups import FIELDS, GROUPS
from megatron.neox_arguments.neox_args import NeoXArgs

__all__ = ["NeoXArgs", "ConfigError", "GROUPS", "FIELDS", "DistributedEnv", "distributed_env", "resolve_backend"]
