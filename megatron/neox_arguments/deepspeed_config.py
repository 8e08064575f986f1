"""The DeepSpeed config dict of a run: batch sizes, clipping, ZeRO, precision and logging.

The optimizer and the learning-rate schedule are not in it: the trainer builds both itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from megatron.neox_arguments.optimizer import ZERO_DEFAULTS

if TYPE_CHECKING:
    from megatron.neox_arguments.neox_args import NeoXArgs

# Top-level DeepSpeed keys this module writes; deepspeed_extra_args may not set them again.
DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "zero_optimization", "fp16", "bf16", "steps_per_print", "wall_clock_breakdown", "communication_data_type",
    "torch_autocast",
)

# ZeRO stages tested with torch_autocast (fp32 parameters under DeepSpeed's ZeRO 0 and its ZeRO 1/2 optimizer).
AUTOCAST_ZERO_STAGES = (0, 1, 2)

# Keys GPT-NeoX configs put in the fp16 mapping that DeepSpeed's fp16 section rejects.
_NEOX_ONLY_FP16_KEYS = ("fp16", "type")


def torch_autocast_problems(args: "NeoXArgs") -> list[str]:
    """Why `torch_autocast: true` cannot run with the rest of `args` (empty when it can)."""
    precision, parallel = args.precision, args.parallel
    if not precision.torch_autocast:
        return []
    problems = []
    if precision.precision != "bfloat16":
        problems.append(
            f"torch_autocast runs bf16 compute over fp32 parameters, but precision is {precision.precision}; "
            "set precision: bfloat16 (or bf16: {enabled: true}), or torch_autocast: false"
        )
    stage = args.optimizer.zero_stage
    if stage not in AUTOCAST_ZERO_STAGES:
        problems.append(
            f"torch_autocast supports ZeRO stages {', '.join(map(str, AUTOCAST_ZERO_STAGES))}, got stage {stage}; "
            "change zero_optimization.stage or set torch_autocast: false"
        )
    if parallel.model_parallel_size > 1 or parallel.pipe_parallel_size > 1:
        problems.append(
            "torch_autocast is supported without tensor or pipeline parallelism only (model_parallel_size "
            f"{parallel.model_parallel_size}, pipe_parallel_size {parallel.pipe_parallel_size}): the pipeline engine "
            "and the tensor-parallel layers are tested with DeepSpeed's bf16 parameters; set torch_autocast: false"
        )
    return problems


# Keys (and value types) of the DeepSpeed sections that typical configs use: sections made only of
# these are not handed to DeepSpeed's config models, so loading such a config stays free of torch.
_USUAL_SECTION_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "zero_optimization": {k: (type(v),) for k, v in ZERO_DEFAULTS.items()},
    "fp16": {"enabled": (bool,), "loss_scale": (int, float), "loss_scale_window": (int,), "initial_scale_power": (int,),
             "hysteresis": (int,), "min_loss_scale": (int, float), **{k: (str, bool) for k in _NEOX_ONLY_FP16_KEYS}},
    "bf16": {"enabled": (bool,)},
}


def _section_model(name: str):
    if name == "zero_optimization":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        return DeepSpeedZeroConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config

    return {"fp16": DeepSpeedFP16Config, "bf16": DeepSpeedBF16Config}[name]


def deepspeed_section_problems(name: str, section: dict[str, Any]) -> list[str]:
    """What DeepSpeed's config model for `name` (zero_optimization, fp16, bf16) rejects in `section`, one message per key.

    Without this check a misspelt key surfaced as a pydantic traceback inside deepspeed.initialize,
    after every rank had built its model.
    """
    usual = _USUAL_SECTION_KEYS[name]
    if all(k in usual and isinstance(v, usual[k]) and not (isinstance(v, bool) and bool not in usual[k]) for k, v in section.items()):
        return []
    import difflib

    import pydantic

    model = _section_model(name)
    try:
        model(**{k: v for k, v in section.items() if not (name == "fp16" and k in _NEOX_ONLY_FP16_KEYS)})
    except pydantic.ValidationError as exc:
        fields = model.model_fields
        names = list(fields) + [f.alias for f in fields.values() if f.alias]
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            hint = ""
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][0]), names, n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(sorted(names))}"
            problems.append(f"key `{where}`: {err['msg']} (got {err.get('input')!r}){hint}")
        return problems
    return []


# deepspeed_extra_args sections whose keys DeepSpeed knows: (module, config model) or the flops profiler's
# constants (its config is not a pydantic model, and it drops unknown keys without a word).
_EXTRA_SECTION_MODELS = {
    "comms_logger": ("deepspeed.comm.config", "CommsLoggerConfig"),
    "tensorboard": ("deepspeed.monitor.config", "TensorBoardConfig"),
    "wandb": ("deepspeed.monitor.config", "WandbConfig"),
    "csv_monitor": ("deepspeed.monitor.config", "CSVConfig"),
    "comet": ("deepspeed.monitor.config", "CometConfig"),
}


def _extra_section_keys(name: str) -> Optional[list[str]]:
    import importlib

    if name == "flops_profiler":
        constants = importlib.import_module("deepspeed.profiling.constants")
        return sorted(v for k, v in vars(constants).items()
                      if k.startswith("FLOPS_PROFILER_") and not k.endswith("_DEFAULT") and isinstance(v, str) and v.isidentifier())
    if name not in _EXTRA_SECTION_MODELS:
        return None
    module, model = _EXTRA_SECTION_MODELS[name]
    fields = getattr(importlib.import_module(module), model).model_fields
    return sorted({*fields, *(f.alias for f in fields.values() if f.alias)})


def extra_section_problems(name: str, section: Any) -> list[str]:
    """Keys of a deepspeed_extra_args section that DeepSpeed does not read (a typo there is dropped silently
    by the flops profiler, or fails inside deepspeed.initialize for the monitors)."""
    if not isinstance(section, dict):
        return []
    keys = _extra_section_keys(name)
    if keys is None:
        return []
    import difflib

    problems = []
    for key in section:
        close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
        if key not in keys:
            hint = f"did you mean `{close[0]}`?" if close else f"its keys are {', '.join(keys)}"
            problems.append(f"`{name}.{key}` is not a key DeepSpeed reads; {hint}")
    return problems


def build_deepspeed_config(args: "NeoXArgs", dp_world_size: int) -> dict[str, Any]:
    """The dict for deepspeed.initialize(config=...), for `dp_world_size` data-parallel ranks.

    Raises ConfigError for a precision setting DeepSpeed cannot run here.
    """
    from megatron.neox_arguments.errors import ConfigError

    problems = torch_autocast_problems(args)
    if problems:
        raise ConfigError(problems)
    batch = args.training.batch_sizes(dp_world_size)
    config: dict[str, Any] = {
        "train_batch_size": batch.train_batch_size,
        "train_micro_batch_size_per_gpu": batch.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "gradient_clipping": args.optimizer.gradient_clipping,
        "zero_optimization": dict(args.optimizer.resolved_zero),
        "steps_per_print": args.logging.steps_per_print,
        "wall_clock_breakdown": args.logging.wall_clock_breakdown,
    }
    if args.optimizer.type == "sgd":
        # DeepSpeed lists the optimizers it tested under ZeRO (Adam and AdamW among them, SGD not);
        # SGD's state (a momentum buffer) is elementwise, so partitioning it is exact.
        config["zero_allow_untested_optimizer"] = True
    precision = args.precision
    if precision.precision == "fp16":
        fp16 = {k: v for k, v in (precision.fp16 or {}).items() if k not in _NEOX_ONLY_FP16_KEYS}
        config["fp16"] = {**fp16, "enabled": True}
    elif precision.precision == "bfloat16" and precision.torch_autocast:
        # No bf16 section: parameters stay fp32 and the client optimizer steps them directly.
        autocast: dict[str, Any] = {"enabled": True, "dtype": "bfloat16"}
        if precision.fp32_allreduce:
            autocast["lower_precision_safe_modules"] = []  # no parameter's gradient is reduced in bf16
        config["torch_autocast"] = autocast
    elif precision.precision == "bfloat16":
        config["bf16"] = {**(precision.bf16 or {}), "enabled": True}
    if precision.fp32_allreduce:
        config["communication_data_type"] = "fp32"
    config.update(args.launcher.deepspeed_extra_args or {})
    return config
