"""Cross-key checks and derived values of a loaded config (everything but SepLLM, which has its own module).

Each check adds a problem naming the keys to change; `resolve_and_validate` fills in the
values GPT-NeoX derives (precision, default optimizer and ZeRO settings).
"""
from __future__ import annotations

import copy
import difflib
from typing import TYPE_CHECKING, Any

from megatron.neox_arguments.errors import ConfigError
from megatron.neox_arguments.findings import Findings
from megatron.neox_arguments.model import FULL_ATTENTION_TYPES, expand_attention_config
from megatron.neox_arguments.optimizer import DEFAULT_OPTIMIZER, OPTIMIZER_PARAMS, OPTIMIZER_TYPES, ZERO_DEFAULTS
from megatron.neox_arguments.sepllm_validation import validate_sepllm
from megatron.neox_arguments.training import COMPILE_MODES, CUDA_GRAPH_COMPILE_MODES

if TYPE_CHECKING:
    from megatron.neox_arguments.neox_args import NeoXArgs

# GPT-NeoX types not built here.
_NOT_YET_OPTIMIZERS = ("onebitadam", "sm3", "madgrad_wd", "lion")
# GPT-NeoX's ZeRO-Offload optimizers: here the offload setting itself picks DeepSpeed's CPU Adam.
_OFFLOAD_OPTIMIZERS = ("cpu_adam", "cpu_torch_adam")


def resolve_and_validate(args: "NeoXArgs", f: Findings) -> None:
    _model(args, f)
    _parallel_and_batch(args, f)
    _optimizer(args, f)
    _layout(args, f)
    _lr(args, f)
    _precision(args, f)
    _data(args, f)
    _checkpoint(args, f)
    _logging_and_launcher(args, f)
    _generation(args, f)
    validate_sepllm(args.sepllm, args.model, f)


# DeepSpeed keys that deepspeed_extra_args may not set: they would undo what the top-level keys say.
_EXTRA_REFUSED = {
    "bfloat16": "it is DeepSpeed's other name for bf16; set precision: bfloat16 at the top level",
    "amp": "set precision at the top level",
    "optimizer": "the trainer builds the optimizer from the top-level `optimizer` key",
    "scheduler": "the learning-rate schedule comes from the lr_* keys (lr_decay_style, warmup, min_lr)",
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(f: Findings, obj: Any, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            f.problem(f"{f.key(name, value)} must be >= {minimum}")


def _model(args: "NeoXArgs", f: Findings) -> None:
    m = args.model
    for name, what in (("num_layers", "number of transformer layers"), ("hidden_size", "model width"),
                       ("num_attention_heads", "number of attention heads"), ("seq_length", "training sequence length")):
        if getattr(m, name) is None:
            f.problem(f"`{name}` ({what}) is not set; every config needs the model shape, e.g. configs/pythia/160M.yml")
    _positive(f, m, ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "seq_length",
                     "max_position_embeddings", "intermediate_size", "mlp_multiple_of", "make_vocab_size_divisible_by"))
    if m.hidden_size and m.num_attention_heads and m.hidden_size % m.num_attention_heads:
        f.problem(f"{f.key('hidden_size', m.hidden_size)} must be divisible by {f.key('num_attention_heads', m.num_attention_heads)}")
    if m.num_kv_heads and m.num_attention_heads and m.num_attention_heads % m.num_kv_heads:
        f.problem(f"{f.key('num_attention_heads', m.num_attention_heads)} must be a multiple of {f.key('num_kv_heads', m.num_kv_heads)}")
    if m.max_position_embeddings and m.seq_length and m.max_position_embeddings < m.seq_length:
        f.problem(f"{f.key('max_position_embeddings', m.max_position_embeddings)} must be >= {f.key('seq_length', m.seq_length)}")
    if not 0.0 < m.rotary_pct <= 1.0:
        f.problem(f"{f.key('rotary_pct', m.rotary_pct)} must be in (0, 1]")
    elif m.pos_emb == "rotary" and m.hidden_size and m.num_attention_heads and not m.hidden_size % m.num_attention_heads:
        head = m.hidden_size // m.num_attention_heads
        dims = int(head * m.rotary_pct)
        if dims < 2 or dims % 2:
            fit = max(2, dims - dims % 2)
            f.problem(f"{f.key('rotary_pct', m.rotary_pct)} of head size {head} rotates {dims} dimensions; it must be a "
                      f"positive even number (rotary_pct: {fit / head:g} rotates {fit})")
    if m.pos_emb == "learned" and m.opt_pos_emb_offset and m.seq_length:
        rows = m.max_position_embeddings or m.seq_length
        if rows < m.seq_length + m.opt_pos_emb_offset:
            f.problem(f"learned positions shifted by {f.key('opt_pos_emb_offset', m.opt_pos_emb_offset)} need "
                      f"max_position_embeddings >= seq_length + offset = {m.seq_length + m.opt_pos_emb_offset} (got {rows})")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0.0 <= getattr(m, name) < 1.0:
            f.problem(f"{f.key(name, getattr(m, name))} must be in [0, 1)")
    if m.gpt_j_tied and not m.gpt_j_residual:
        f.problem(f"{f.key('gpt_j_tied', True)} only applies with gpt_j_residual: true; set gpt_j_tied: false or gpt_j_residual: true")
    if m.attention_config is not None and m.num_layers:
        try:
            types = expand_attention_config(m.attention_config, m.num_layers)
        except ValueError as exc:
            f.problem(f"{f.key('attention_config', m.attention_config)}: {exc}")
            return
        other = sorted({t for t in types if t not in FULL_ATTENTION_TYPES})
        if other:
            f.problem(f"{f.key('attention_config', m.attention_config)} uses attention types {other}, which are not supported: "
                      f"SepLLM layers take their pattern from the sepllm settings, so use [[['global'], {m.num_layers}]]")
        elif len(types) != m.num_layers:
            f.problem(f"{f.key('attention_config', m.attention_config)} describes {len(types)} layers but {f.key('num_layers', m.num_layers)}")


def _parallel_and_batch(args: "NeoXArgs", f: Findings) -> None:
    p, t = args.parallel, args.training
    _positive(f, p, ("pipe_parallel_size",), minimum=0)
    _positive(f, p, ("model_parallel_size", "global_num_gpus"))
    _positive(f, t, ("train_iters", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                     "checkpoint_num_layers", "exit_interval"))
    _positive(f, t, ("eval_interval", "eval_iters"), minimum=0)
    sizes = (t.train_micro_batch_size_per_gpu, t.train_batch_size, t.gradient_accumulation_steps)
    if p.global_num_gpus and p.global_num_gpus > 0 and any(sizes[:2]) and all(v is None or v > 0 for v in sizes):
        try:
            t.batch_sizes(p.data_parallel_size(p.global_num_gpus))
        except ConfigError as exc:
            f.problem(f"with {f.key('global_num_gpus', p.global_num_gpus)}: {exc.problems[0]}")


def _layout(args: "NeoXArgs", f: Findings) -> None:
    """Tensor/pipeline sizes against the model and ZeRO (the world size is checked at startup)."""
    from megatron.parallel.layout import model_problems, pipeline_stages, zero_problems

    p, m, t = args.parallel, args.model, args.training
    if p.model_parallel_size is None or p.model_parallel_size < 1 or p.pipe_parallel_size is None or p.pipe_parallel_size < 0:
        return
    tp, pp = p.model_parallel_size, pipeline_stages(p.pipe_parallel_size)
    for problem in model_problems(tp, pp, num_layers=m.num_layers, num_heads=m.num_attention_heads,
                                  num_kv_heads=m.num_kv_heads, seq_length=m.seq_length,
                                  sequence_parallel=p.sequence_parallel):
        f.problem(f"with {f.key('model_parallel_size', tp)} and {f.key('pipe_parallel_size', p.pipe_parallel_size)}: {problem}")
    stage = args.optimizer.zero_optimization.get("stage")
    if stage in (0, 1, 2, 3) and not isinstance(stage, bool):  # other values are reported by _optimizer
        for problem in zero_problems(stage, tp, pp):
            f.problem(problem)
    if t.torch_compile is True and pp > 1:
        f.problem(f"{f.key('torch_compile', True)} is supported without pipeline parallelism only "
                  f"(pipe_parallel_size {p.pipe_parallel_size}); set torch_compile to null (compile where supported) or false")
    _compile_mode(args, f, tp, pp)
    if p.sequence_parallel and tp == 1:
        f.notice(f"{f.key('sequence_parallel', True)} has no effect with model_parallel_size 1")
    if t.partition_activations and (p.sequence_parallel or not (t.checkpoint_activations and tp > 1 and pp > 1)):
        f.notice(f"{f.key('partition_activations', True)} only acts on activations checkpointed by the pipeline "
                 "(checkpoint_activations with pipe_parallel_size > 1 and model_parallel_size > 1) and not with "
                 "sequence_parallel, which already splits the activations between layers, in every layout")


def _compile_mode(args: "NeoXArgs", f: Findings, tp: int, pp: int) -> None:
    t = args.training
    mode = t.torch_compile_mode
    if mode is None:
        return
    if mode not in COMPILE_MODES:
        f.problem(f"{f.key('torch_compile_mode', mode)} is not a torch.compile mode; use one of {', '.join(COMPILE_MODES)} "
                  "or null")
        return
    if t.torch_compile is False:
        f.notice(f"{f.key('torch_compile_mode', mode)} has no effect with {f.key('torch_compile', False)}")
    elif pp > 1:
        f.notice(f"{f.key('torch_compile_mode', mode)} has no effect with pipeline parallelism (blocks are not compiled)")
    if mode not in CUDA_GRAPH_COMPILE_MODES:
        return
    if tp > 1:
        f.problem(f"{f.key('torch_compile_mode', mode)} replays blocks from CUDA graphs, which is supported with "
                  f"model_parallel_size 1 only (got {tp}); use torch_compile_mode: max-autotune-no-cudagraphs or null")


def _optimizer(args: "NeoXArgs", f: Findings) -> None:
    o = args.optimizer
    if o.optimizer is None:
        o.optimizer = copy.deepcopy(DEFAULT_OPTIMIZER)
    opt = o.optimizer
    kind = opt.get("type")
    if not isinstance(kind, str):
        f.problem(f"{f.key('optimizer', opt)} needs a `type` string, e.g. {{type: Adam, params: {{lr: 0.0006}}}}")
    elif kind.lower() in _OFFLOAD_OPTIMIZERS:
        f.problem(f"{f.key('optimizer', opt)}: {kind} is GPT-NeoX's ZeRO-Offload optimizer; write type: Adam and "
                  "zero_optimization: {stage: 2, offload_optimizer: {device: cpu}} (the offload steps DeepSpeed's CPU Adam)")
    elif kind.lower() in _NOT_YET_OPTIMIZERS:
        f.problem(f"{f.key('optimizer', opt)}: optimizer type {kind!r} is not supported yet; use one of {', '.join(OPTIMIZER_TYPES)}")
    elif kind.lower() not in OPTIMIZER_TYPES:
        f.problem(f"{f.key('optimizer', opt)}: unknown optimizer type {kind!r}; use one of {', '.join(OPTIMIZER_TYPES)}")
    for key in sorted(set(opt) - {"type", "params"}, key=str):
        close = difflib.get_close_matches(str(key), ["type", "params"], n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else "it takes `type` and `params` only"
        if str(key).replace("-", "_") == "weight_decay":
            hint = "weight_decay is a top-level key (applied per parameter group)"
        f.problem(f"{f.key('optimizer', opt)}: unknown key {key!r}; {hint}")
    params = opt.setdefault("params", {})
    if not isinstance(params, dict):
        f.problem(f"{f.key('optimizer', opt)}: `params` must be a mapping like {{lr: 0.0006, betas: [0.9, 0.95], eps: 1.0e-8}}")
        return
    if isinstance(kind, str) and kind.lower() in OPTIMIZER_PARAMS:
        allowed = OPTIMIZER_PARAMS[kind.lower()]
        for key in sorted(set(params) - set(allowed)):
            f.problem(f"{f.key('optimizer', opt)}: {kind} takes no parameter {key!r}; its params are {', '.join(allowed)}")
    if "weight_decay" in params and params["weight_decay"] != o.weight_decay:
        f.problem(f"{f.key('optimizer', opt)}: params.weight_decay {params['weight_decay']!r} is not the one applied; "
                  f"{f.key('weight_decay', o.weight_decay)} is (per parameter group, none on biases and norms): set "
                  f"weight_decay: {params['weight_decay']!r} at the top level and drop it from params")
    params.setdefault("lr", DEFAULT_OPTIMIZER["params"]["lr"])
    lr = params["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        f.problem(f"{f.key('optimizer', opt)}: params.lr must be a positive number, got {lr!r}")
    for key, ok, what in (("eps", lambda v: _number(v) and v > 0, "a positive number"),
                          ("momentum", lambda v: _number(v) and v >= 0, "a number >= 0"),
                          ("dampening", lambda v: _number(v), "a number"),
                          ("amsgrad", lambda v: isinstance(v, bool), "true or false"),
                          ("nesterov", lambda v: isinstance(v, bool), "true or false")):
        if key in params and not ok(params[key]):
            f.problem(f"{f.key('optimizer', opt)}: params.{key} must be {what}, got {params[key]!r}")
    if params.get("nesterov") is True and not (_number(params.get("momentum", 0)) and params.get("momentum", 0) > 0
                                                and params.get("dampening", 0) == 0):
        f.problem(f"{f.key('optimizer', opt)}: params.nesterov needs momentum > 0 and dampening 0")
    betas = params.get("betas")
    if betas is not None and not (isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        f.problem(f"{f.key('optimizer', opt)}: params.betas must be two numbers in [0, 1), got {betas!r}")
    if o.weight_decay < 0:
        f.problem(f"{f.key('weight_decay', o.weight_decay)} must be >= 0")
    if o.gradient_clipping < 0:
        f.problem(f"{f.key('gradient_clipping', o.gradient_clipping)} must be >= 0 (0 disables clipping)")
    if o.zero_optimization is None:
        o.zero_optimization = copy.deepcopy(ZERO_DEFAULTS)
    stage = o.zero_optimization.get("stage", ZERO_DEFAULTS["stage"])
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        f.problem(f"{f.key('zero_optimization', o.zero_optimization)}: stage must be 0, 1, 2 or 3, got {stage!r}")
        return
    from megatron.neox_arguments.deepspeed_config import deepspeed_section_problems

    for problem in deepspeed_section_problems("zero_optimization", o.zero_optimization):
        f.problem(f"{f.key('zero_optimization', show_value=False)}: {problem}")
    zkey = f.key("zero_optimization", show_value=False)
    if o.zero_optimization.get("cpu_offload"):
        f.problem(f"{zkey}: cpu_offload is DeepSpeed's old spelling; write offload_optimizer: {{device: cpu}}")
    device = o.offload_device
    if device == "nvme":
        f.problem(f"{zkey}: offload_optimizer to nvme is not supported (it needs DeepSpeed's async I/O op and libaio); "
                  "use device: cpu")
    elif device not in ("none", "cpu"):
        f.problem(f"{zkey}: offload_optimizer.device must be none, cpu or nvme, got {device!r}")
    elif device == "cpu":
        if stage == 0:
            f.problem(f"{zkey}: offload_optimizer needs ZeRO stage 1, 2 or 3 (stage is 0)")
        if o.type not in ("adam", "adamw"):
            f.problem(f"{zkey}: offload_optimizer steps DeepSpeed's CPU Adam, so optimizer type must be Adam or AdamW, "
                      f"not {o.resolved_optimizer.get('type')}")
        elif o.params.get("amsgrad"):
            f.problem(f"{zkey}: offload_optimizer steps DeepSpeed's CPU Adam, which has no amsgrad; drop amsgrad")
        if args.precision.torch_autocast:
            f.problem(f"{zkey}: offload_optimizer does not run with torch_autocast (which steps the fused AdamW on the "
                      "GPU); set torch_autocast: false")
        if args.parallel.pipe_parallel_size > 1:
            f.problem(f"{zkey}: offload_optimizer is not supported with pipeline parallelism (pipe_parallel_size "
                      f"{args.parallel.pipe_parallel_size})")


def _lr(args: "NeoXArgs", f: Findings) -> None:
    s = args.lr
    _positive(f, s, ("lr_decay_iters",))
    if not 0.0 <= s.warmup <= 1.0:
        f.problem(f"{f.key('warmup', s.warmup)} is a fraction of the decay iterations and must be in [0, 1]")
    if s.min_lr < 0:
        f.problem(f"{f.key('min_lr', s.min_lr)} must be >= 0")
    lr = args.optimizer.optimizer.get("params", {}).get("lr") if isinstance(args.optimizer.optimizer, dict) else None
    if isinstance(lr, (int, float)) and s.min_lr > lr:
        f.problem(f"{f.key('min_lr', s.min_lr)} must not exceed the peak learning rate optimizer.params.lr = {lr}")
    if s.override_lr_scheduler and s.use_checkpoint_lr_scheduler:
        f.problem(f"{f.key('override_lr_scheduler', True)} and {f.key('use_checkpoint_lr_scheduler', True)} contradict each other; set one to false")


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and bool(section.get("enabled", False))


def _precision(args: "NeoXArgs", f: Findings) -> None:
    p = args.precision
    if isinstance(p.fp16, dict) and p.fp16 and "enabled" not in p.fp16:
        f.problem(f"{f.key('fp16', p.fp16)} needs an `enabled` key (true or false)")
    from megatron.neox_arguments.deepspeed_config import deepspeed_section_problems

    for name in ("fp16", "bf16"):
        section = getattr(p, name)
        if isinstance(section, dict) and "enabled" in section and not isinstance(section["enabled"], bool):
            # DeepSpeed's pydantic reads "no" as false, truthiness as true: refuse the ambiguity
            f.problem(f"{f.key(name, section)}: `enabled` must be true or false (unquoted), got {section['enabled']!r}")
            return
        for problem in deepspeed_section_problems(name, section) if isinstance(section, dict) else []:
            f.problem(f"{f.key(name, show_value=False)}: {problem}")
    fp16_on = _enabled(p.fp16)
    # GPT-NeoX's older configs (pythia/1B.yml) spell bf16 as fp16: {enabled: true, type: bfloat16}.
    fp16_means_bf16 = fp16_on and p.fp16.get("type") == "bfloat16"
    bf16_on = _enabled(p.bf16) or fp16_means_bf16
    if fp16_on and not fp16_means_bf16 and bf16_on:
        f.problem(f"{f.key('fp16', p.fp16)} and {f.key('bf16', p.bf16)} are both enabled; set enabled: false in one of them")
        return
    implied = "bfloat16" if bf16_on else "fp16" if fp16_on else None
    if p.precision is None:
        p.precision = implied or "fp32"
    elif implied is not None and implied != p.precision:
        section = "fp16" if fp16_on else "bf16"
        f.problem(f"{f.key('precision', p.precision)} conflicts with {f.key(section, getattr(p, section))}, which enables {implied}; "
                  f"change precision to {implied} or set {section}.enabled: false")
        return
    from megatron.neox_arguments.deepspeed_config import torch_autocast_problems

    for problem in torch_autocast_problems(args):
        f.problem(f"{f.key('torch_autocast', p.torch_autocast)}: {problem}")


def _data(args: "NeoXArgs", f: Findings) -> None:
    d = args.data
    separate = {name: getattr(d, name) for name in ("train_data_paths", "valid_data_paths", "test_data_paths")}
    given = [name for name, v in separate.items() if v is not None]
    if d.data_path is not None and given:
        f.problem(f"give either {f.key('data_path', d.data_path)} or train/valid/test_data_paths, not both; "
                  f"remove one (a later file can set them to null)")
    if given and len(given) < 3:
        missing = [name for name in separate if name not in given]
        f.problem(f"{', '.join(f.key(n, show_value=False) for n in given)} also need {', '.join(missing)} (GPT-NeoX takes all three or data_path)")
    for kind in ("train", "valid", "test"):
        paths, labels = getattr(d, f"{kind}_data_paths"), getattr(d, f"{kind}_label_data_paths")
        if labels is not None and (paths is None or len(labels) != len(paths)):
            f.problem(f"{f.key(f'{kind}_label_data_paths', labels)} needs one label dataset per entry of {kind}_data_paths "
                      f"({len(paths or [])}), in the same order" + (" (label datasets do not pair with data_path: use "
                      "train/valid/test_data_paths)" if d.data_path is not None else ""))
    for kind in ("train", "valid", "test"):
        paths, weights = getattr(d, f"{kind}_data_paths"), getattr(d, f"{kind}_data_weights")
        if weights is None:
            continue
        if paths is None or len(weights) != len(paths):
            f.problem(f"{f.key(f'{kind}_data_weights', weights)} needs one weight per entry of {kind}_data_paths ({len(paths or [])})")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            f.problem(f"{f.key(f'{kind}_data_weights', weights)} must be >= 0 with at least one > 0")
    try:
        parts = [float(x) for x in d.split.replace("/", ",").split(",")]
        if not 1 <= len(parts) <= 3 or any(x < 0 for x in parts) or sum(parts) <= 0:
            raise ValueError
    except ValueError:
        f.problem(f"{f.key('split', d.split)} must be up to three non-negative train,valid,test proportions like '949,50,1'")
    _positive(f, d, ("num_workers",), minimum=0)
    if d.weighted_sampler_alpha < 0:
        f.problem(f"{f.key('weighted_sampler_alpha', d.weighted_sampler_alpha)} must be >= 0")


def _checkpoint(args: "NeoXArgs", f: Findings) -> None:
    c = args.checkpoint
    _positive(f, c, ("checkpoint_factor", "keep_last_n_checkpoints"))
    _positive(f, c, ("iteration",), minimum=0)
    if c.checkpoint_scale == "log" and c.checkpoint_factor is not None and c.checkpoint_factor < 2:
        f.problem(f"with checkpoint_scale: log, {f.key('checkpoint_factor', c.checkpoint_factor)} must be >= 2 (saves at steps f, f^2, ...)")
    if c.extra_save_iters is not None and any(i < 0 for i in c.extra_save_iters):
        f.problem(f"{f.key('extra_save_iters', c.extra_save_iters)} must list iterations >= 0")


def _logging_and_launcher(args: "NeoXArgs", f: Findings) -> None:
    lg, la = args.logging, args.launcher
    _positive(f, lg, ("log_interval", "steps_per_print"))
    _positive(f, la, ("num_gpus",))
    if la.num_nodes != -1 and la.num_nodes < 1:
        f.problem(f"{f.key('num_nodes', la.num_nodes)} must be >= 1, or -1 for all hosts")
    if not 1 <= la.master_port <= 65535:
        f.problem(f"{f.key('master_port', la.master_port)} must be a TCP port (1-65535)")
    if la.include and la.exclude:
        f.problem(f"{f.key('include', la.include)} and {f.key('exclude', la.exclude)} are mutually exclusive in DeepSpeed's launcher; keep one")
    if (la.include or la.exclude) and la.num_nodes != -1:
        f.problem(f"{f.key('num_nodes', la.num_nodes)} cannot be combined with include/exclude in DeepSpeed's launcher; remove one")
    p = args.parallel
    if p.distributed_backend == "mpi":
        import torch.distributed

        if not torch.distributed.is_mpi_available():
            f.problem(f"{f.key('distributed_backend', 'mpi')}: this torch is built without MPI; use nccl (GPUs) or gloo")
    method = str(p.pipe_partition_method)
    if method.lower() not in ("parameters", "uniform") and not method.lower().startswith("type:"):
        f.problem(f"{f.key('pipe_partition_method', method)} must be 'parameters', 'uniform' or 'type:REGEX' "
                  "(e.g. type:transformer|mlp)")
    elif method.lower().startswith("type:"):
        import re

        try:
            re.compile(method[len("type:"):], re.IGNORECASE)
        except re.error as exc:
            f.problem(f"{f.key('pipe_partition_method', method)}: the pattern after 'type:' is not a regular expression ({exc})")
    if lg.use_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            f.notice(f"{f.key('use_wandb', True)}, but wandb is not installed here: Weights & Biases logging will be off "
                     "(pip install wandb to turn it on)")
    if la.deepspeed_extra_args:
        import difflib

        from megatron.neox_arguments.deepspeed_config import DEEPSPEED_KEYS, extra_section_problems
        from megatron.neox_arguments.groups import FIELDS

        where = f.key('deepspeed_extra_args', show_value=False)
        for key in la.deepspeed_extra_args:
            if key in DEEPSPEED_KEYS or key in FIELDS:
                f.problem(f"{where} sets `{key}`, which is a top-level config key; set `{key}` at the top level instead")
            elif key in _EXTRA_REFUSED:
                f.problem(f"{where} sets `{key}`, which would go around this config: {_EXTRA_REFUSED[key]}")
            # DeepSpeed drops keys it does not know without a word
            elif close := difflib.get_close_matches(key, [*DEEPSPEED_KEYS, *_EXTRA_REFUSED], n=1, cutoff=0.8):
                f.problem(f"{where} sets `{key}`; did you mean `{close[0]}`?")
            else:
                for problem in extra_section_problems(key, la.deepspeed_extra_args[key]):
                    f.problem(f"{where}: {problem}")


def _generation(args: "NeoXArgs", f: Findings) -> None:
    g = args.generation
    # text_gen_type stays null when not given (GenerationArgs.kind derives it), so that a run's resolved
    # config.yml, reused for generation with a sample_input_file added, reads the prompts.
    if g.text_gen_type == "input-file" and not g.sample_input_file:
        f.problem(f"{f.key('text_gen_type', g.text_gen_type)} needs sample_input_file (the file of prompts)")
    if g.temperature < 0:
        f.problem(f"{f.key('temperature', g.temperature)} must be >= 0 (0 is greedy)")
    if not 0.0 <= g.top_p <= 1.0:
        f.problem(f"{f.key('top_p', g.top_p)} must be in [0, 1] (0 disables top-p)")
    _positive(f, g, ("top_k",), minimum=0)
    _positive(f, g, ("maximum_tokens", "num_samples"))
