"""Apply tensor, sequence, pipeline and data parallelism to a built model, from outside it.

    parallel = parallelize(model, args, env)          # shards `model` for this rank
    optimizer = build_optimizer(parallel.module, ...)
    engine = parallel.initialize(optimizer, scheduler, args.deepspeed_config(parallel.dp_size))
    loss = parallel.lm_loss(logits, labels, loss_mask)          # vocab-parallel under TP
    engine.backward(loss); grad_norm = parallel.step(engine)      # otherwise, per micro-batch
    loss = engine.train_batch(parallel.pipe_batches(batches))   # when parallel.pipelined

With model_parallel_size 1 and one pipeline stage the model and the DeepSpeed engine are exactly
what a data-parallel run uses (no mpu, plain cross-entropy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
from torch import nn

from megatron.neox_arguments.training import CUDA_GRAPH_COMPILE_MODES
from megatron.parallel.layout import Layout, model_problems, resolve_layout, zero_problems
from megatron.parallel.loss import lm_loss, vocab_parallel_lm_loss


@dataclass
class Parallel:
    """This rank's share of the model and the groups it works with."""

    layout: Layout
    module: nn.Module  # the (tensor-parallel) GPTModel, or the PipelineModule of this stage
    mpu: Optional[object]  # DeepSpeed's mpu; None for data parallelism only
    tp_rank: int = 0
    pp_rank: int = 0
    dp_rank: int = 0
    sequence_parallel: bool = False
    pass_doc_ids: bool = False
    compiled: bool = False  # blocks and loss run under torch.compile (megatron.parallel.compile)
    cuda_graphs: bool = False  # compiled blocks replay CUDA graphs (torch_compile_mode reduce-overhead, max-autotune)
    # Set by deepspeed_config: the clipping threshold `step` applies itself (0: norm only), or
    # None where DeepSpeed clips (its optimizer wrappers, the pipeline engine).
    clip_grad: Optional[float] = None
    _trainable: list = field(default_factory=list, repr=False)  # set by initialize: the parameters `step` clips

    @property
    def dp_size(self) -> int:
        return self.layout.dp

    @property
    def pipelined(self) -> bool:
        return self.layout.pp > 1

    @property
    def dp_group(self):
        """The data-parallel group (None: the world, when there is no model parallelism)."""
        return None if self.mpu is None else self.mpu.get_data_parallel_group()

    def begin_micro_batch(self) -> None:
        """Call before each micro-batch's forward: with CUDA-graph blocks, tells torch that the
        previous micro-batch's graph outputs are dead (step() has copied out the gradients that are
        not), so their memory is replayed into without checks."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def lm_loss(self, logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            from megatron.parallel import compile as c

            loss = c.compiled_lm_loss() if self.layout.tp == 1 else c.compiled_vocab_parallel_lm_loss()
            return loss(logits, labels, loss_mask)
        return (lm_loss if self.layout.tp == 1 else vocab_parallel_lm_loss)(logits, labels, loss_mask)

    def _pipe_loss(self, logits: torch.Tensor, labels: tuple) -> torch.Tensor:
        return self.lm_loss(logits, *labels)

    def deepspeed_config(self, config: dict) -> dict:
        """`config` (NeoXArgs.deepspeed_config) with what this layout adds."""
        config = dict(config)
        # DeepSpeed's throughput timer synchronizes the device at the start and end of every step
        # by default, which stalls the queue of kernels twice per step; the trainer measures
        # throughput itself. A config that sets `timers` keeps its own.
        config.setdefault("timers", {"throughput": {"enabled": False}})
        bf16 = config.get("bf16") or {}
        zero_cfg = config.get("zero_optimization") or {}
        offloaded = str((zero_cfg.get("offload_optimizer") or {}).get("device", "none")).lower() != "none"
        if bf16.get("enabled") and zero_cfg.get("stage", 0) == 1 and not offloaded:  # BF16_Optimizer cannot offload
            # fp32 gradient accumulation makes DeepSpeed run bf16 ZeRO-1 with its BF16_Optimizer
            # (fp32 master weights and gradients, states partitioned over data-parallel ranks)
            # instead of the generic ZeRO optimizer, whose per-parameter overflow checks, norms and
            # bucket copies cost 60% more host time per step (profiled: 48 vs 61 ms for Pythia-160M
            # at 8 x 2048 on an H100); immediate_grad_update adds each gradient to its fp32 copy in
            # backward, as it is produced, rather than in a loop after it.
            config.setdefault("data_types", {"grad_accum_dtype": "fp32"})
            config["bf16"] = {"immediate_grad_update": True, **bf16}
        zero = dict(config.get("zero_optimization") or {})
        if (config.get("torch_autocast") or {}).get("enabled") and self.dp_size == 1 and zero.get("stage", 0) in (1, 2):
            # Over one data-parallel rank ZeRO partitions nothing, but its optimizer reads norms and
            # overflow flags back from the device every step; stage 0 steps the torch optimizer directly.
            config["zero_optimization"] = {**zero, "stage": 0}
        low_precision_params = any((config.get(k) or {}).get("enabled") for k in ("fp16", "bf16"))
        stage = (config.get("zero_optimization") or {}).get("stage", 0)
        self.clip_grad = None
        if not self.pipelined and stage == 0 and not low_precision_params:
            # Over fp32 parameters without ZeRO, DeepSpeed clips with a Python loop of per-parameter
            # norms and products plus an all-reduce of the norm; `step` does it in a few fused
            # (foreach) kernels, never reading the device.
            self.clip_grad = float(config.get("gradient_clipping") or 0.0)
            config["gradient_clipping"] = 0.0
        if self.pipelined:
            # DeepSpeed splits the activation it sends between stages over the tensor-parallel ranks,
            # assuming every rank holds the same tensor; under sequence parallelism each holds a
            # different slice of the sequence, so it must send them whole.
            split = self.layout.tp > 1 and not self.sequence_parallel
            config["pipeline"] = {**config.get("pipeline", {}), "pipe_partitioned": split, "grad_partitioned": split}
        return config

    def initialize(self, optimizer, lr_scheduler, config: dict):
        """The DeepSpeed engine (a PipelineEngine when pipelined) over this rank's module.

        Step it with `step(engine)`, not engine.step(): without ZeRO the clipping is done there.
        """
        import deepspeed

        engine, _, _, _ = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=lr_scheduler,
            config=self.deepspeed_config(config), mpu=None if self.pipelined else self.mpu,
            dist_init_required=False,
        )
        if self.dp_size == 1 and not self.pipelined and engine.zero_optimization_stage() == 0:
            # Without ZeRO DeepSpeed "all-reduces" over one rank too: it flattens every gradient into
            # one buffer, reduces it and copies it back, two passes over the gradients for nothing.
            engine.enable_backward_allreduce = False
        # Walking the module tree for its parameters costs host time every step; the set is fixed.
        self._trainable = [p for p in engine.module.parameters() if p.requires_grad]
        return engine

    def step(self, engine) -> Optional[torch.Tensor]:
        """engine.step() after a micro-batch's backward (DeepSpeed steps the optimizer on the last
        of the accumulation steps). Compiled blocks' gradients get storage of their own first
        (megatron.parallel.compile.own_gradients). Without ZeRO the gradients are clipped here
        (see deepspeed_config) and their norm is returned as a device scalar; None where DeepSpeed
        keeps the norm (engine.get_global_grad_norm())."""
        norm = None
        boundary = engine.is_gradient_accumulation_boundary()
        if self.compiled:
            from megatron.parallel.compile import own_gradients

            own_gradients(self.module, copy_all=self.cuda_graphs and not boundary)
        if engine.zero_optimization_stage() == 0 and not self.pipelined and boundary:
            parameters = [p for p in self._trainable if p.grad is not None]
            norm = self.grad_norm(parameters)  # gradients are data-parallel averaged by now
            if self.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(parameters, self.clip_grad, norm)
        engine.step()
        return norm

    def pipe_batches(self, batches: list[dict]) -> Iterator[tuple]:
        """Micro-batches (get_batch dicts) as DeepSpeed's pipeline engine reads them."""
        for b in batches:
            tokens = (b["input_ids"], b["position_ids"])
            if self.pass_doc_ids:
                tokens = tokens + (b["doc_ids"],)
            yield tokens, (b["labels"], b["loss_mask"])

    def mean_over_data_parallel(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over data-parallel ranks (model-parallel ranks hold the same value)."""
        if self.dp_size == 1:
            return value
        value = value.clone()
        torch.distributed.all_reduce(value, group=self.dp_group)
        return value / self.dp_size

    @torch.no_grad()
    def grad_norm(self, parameters) -> torch.Tensor:
        """L2 norm of the gradients of the whole model (a device scalar): split parameters count
        on every tensor-parallel rank, whole ones once, and the pipeline stages add up."""
        from deepspeed.runtime.utils import is_model_parallel_parameter

        grads = [
            p.grad.detach()
            for p in parameters
            if p.grad is not None and not getattr(p, "ds_pipe_replicated", False)
            and (self.tp_rank == 0 or is_model_parallel_parameter(p))
        ]
        if not grads:
            total = torch.zeros((), device=next(iter(self.module.parameters())).device)
        else:
            # One fused norm kernel per dtype instead of a few kernels per parameter.
            total = torch.nn.utils.get_total_norm(grads).float().pow(2)
        if self.mpu is not None:
            torch.distributed.all_reduce(total, group=self.mpu.get_model_parallel_group())
        return total.sqrt()


def check_fits(args, layout: Layout, mlp_width: Optional[int] = None) -> None:
    """Raise ValueError listing every reason `args` cannot run with `layout`."""
    m, p = args.model, args.parallel
    problems = model_problems(
        layout.tp, layout.pp, num_layers=m.num_layers, num_heads=m.num_attention_heads, num_kv_heads=m.num_kv_heads,
        mlp_width=mlp_width, seq_length=m.seq_length, sequence_parallel=p.sequence_parallel,
    )
    problems += zero_problems(args.optimizer.zero_stage, layout.tp, layout.pp)
    if problems:
        raise ValueError(f"the config does not fit the layout {layout}:\n  - " + "\n  - ".join(problems))


def configure_checkpointing(mpu, partition_activations: bool) -> None:
    """DeepSpeed's activation checkpointing (used by the pipeline's checkpointed stages)."""
    import deepspeed

    deepspeed.checkpointing.configure(mpu, partition_activations=partition_activations)


def compile_wanted(setting: Optional[bool], layout: Layout) -> bool:
    """Whether to compile (the `torch_compile` setting): None means on GPUs, without pipeline parallelism.

    Tensor-parallel blocks compile whole: dynamo traces megatron-core's layers and the sequence-parallel
    collectives into the block's graph. DeepSpeed's pipeline engine calls the blocks itself, so
    pipelined runs stay eager.
    """
    if setting is False:
        return False
    if setting is None:
        return torch.cuda.is_available() and layout.pp == 1
    if layout.pp > 1:
        raise ValueError(
            f"torch_compile: true is supported without pipeline parallelism only (the layout is {layout}); "
            "set torch_compile to null (compile where supported) or false"
        )
    return True


def parallelize(model: nn.Module, args, world_size: int, rank: int) -> Parallel:
    """Collective. Split `model` (a whole, initialised GPTModel) for this rank of a `world_size` job."""
    from megatron.parallel import groups
    from megatron.parallel.compile import compile_model
    from megatron.parallel.pipeline import build_pipeline
    from megatron.parallel.tensor_parallel import tensor_parallelize

    p, t = args.parallel, args.training
    layout = resolve_layout(world_size, p.model_parallel_size, p.pipe_parallel_size)
    check_fits(args, layout, mlp_width=model.dims.mlp_width)
    compiled = compile_wanted(t.torch_compile, layout)
    mode = t.torch_compile_mode if compiled and t.torch_compile_mode != "default" else None
    cuda_graphs = mode in CUDA_GRAPH_COMPILE_MODES and torch.cuda.is_available()  # with tp 1 only (validation)
    if layout.tp == 1 and layout.pp == 1:
        if compiled:
            compile_model(model, mode=mode)
        return Parallel(layout, model, None, dp_rank=rank, compiled=compiled, cuda_graphs=cuda_graphs)

    groups.init_megatron_core(layout)
    from megatron.core import parallel_state

    tp_rank, pp_rank, dp_rank = layout.coords(rank)
    sequence_parallel = bool(p.sequence_parallel) and layout.tp > 1
    if layout.tp > 1:
        tensor_parallelize(model, rank=tp_rank, size=layout.tp, group=parallel_state.get_tensor_model_parallel_group(),
                           sequence_parallel=sequence_parallel)
        if compiled:  # after the layer swap, so that dynamo traces megatron-core's layers
            compile_model(model, mode=mode)
    parallel = Parallel(layout, model, None, tp_rank, pp_rank, dp_rank, sequence_parallel,
                        pass_doc_ids=bool(args.data.reset_attention_mask), compiled=compiled)
    if layout.pp > 1:
        # The pipeline runs blocks one by one and checkpoints them itself (GPTModel.run_layers is unused).
        interval = t.checkpoint_num_layers if t.checkpoint_activations else 0
        parallel.module = build_pipeline(
            model, topology=groups.topology(layout), loss_fn=parallel._pipe_loss,
            partition_method=p.pipe_partition_method, checkpoint_interval=interval,
        )
        grid = parallel.module.mpu()
    else:
        grid = groups.build_grid(layout)
    groups.check_coordinates(layout, grid)
    parallel.mpu = groups.Mpu(grid)
    # DeepSpeed partitions a checkpointed input assuming every tensor-parallel rank holds all of it;
    # under sequence parallelism each holds its own slice, which is already the saving it would bring.
    configure_checkpointing(parallel.mpu, bool(t.partition_activations) and not sequence_parallel)
    return parallel
