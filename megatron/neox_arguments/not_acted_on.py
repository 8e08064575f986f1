"""Everything we accept from GPT-NeoX/SepLLM configs but do not (fully) act on, with the reason.

This is the one list: the loader prints a notice for the first three tables and raises
"not supported yet" for the last two, so nothing in a config is silently ignored.
"""
from __future__ import annotations

from typing import Any, Callable

# Fields we keep (and write back out) but no code reads. Notice when a config sets a non-default value.
_FUSED = "fused CUDA kernels; plain PyTorch ops run instead (bias_gelu_fusion: the exact GeLU, not GPT-NeoX's tanh approximation)"
NOT_ACTED_ON: dict[str, str] = {
    "scaled_upper_triang_masked_softmax_fusion": _FUSED,
    "scaled_masked_softmax_fusion": _FUSED,
    "bias_gelu_fusion": _FUSED,
    "bias_dropout_fusion": _FUSED,
    "rope_fusion": _FUSED,
    "layernorm_fusion": _FUSED,
    "synchronize_each_layer": "a CUDA-sync debugging aid",
    "data_impl": "the mmap indexed format is always read",
    "mmap_warmup": "the data files are memory-mapped and read on demand, without a warm-up pass",
    "no_save_optim": "checkpoints always hold the optimizer state (needed to resume exactly)",
    "no_save_rng": "checkpoints always hold every rank's RNG state (needed to resume exactly)",
    "use_checkpoint_lr_scheduler": "the schedule always comes from this config's lr_* keys; the iteration comes from the checkpoint",
    "checkpoint_validation_with_forward_pass": "checkpoints are checked by loading them in the tests, not with a stored forward pass",
    "rotary_save_freqs_buffer": "rotary frequencies are recomputed from rotary_emb_base, never saved",
    "log_grad_norm": "only the global gradient norm is logged",
    "log_param_norm": "parameter norms are not logged",
    "log_grad_pct_zeros": "zero-gradient fractions are not logged",
    "log_optimizer_states": "optimizer-state norms are not logged",
    "wandb_init_all_ranks": "Weights & Biases logs from rank 0 only",
}

# Fields whose value is accepted but run differently, with the notice to print when `when(value)`.
RUN_DIFFERENTLY: dict[str, tuple[Callable[[Any], bool], str]] = {}

# GPT-NeoX keys without a field here: (GPT-NeoX's default, reason). At the default they are
# accepted with a notice; any other value is "not supported yet".
UNSUPPORTED_KEYS: dict[str, tuple[Any, str]] = {
    "moe_num_experts": (1, "mixture-of-experts layers are not implemented"),
    "use_mup": (False, "muP parametrisation is not implemented"),
    "sparsity_config": (None, "DeepSpeed sparse attention is not implemented; SepLLM settings define the sparsity"),
    "soft_prompt_tuning": (None, "soft prompt tuning is not implemented"),
    "curriculum_learning": (None, "curriculum learning is not implemented"),
    "num_unique_layers": (None, "parameter sharing across layers is not implemented"),
    "sliding_window_width": (None, "use the SepLLM window (streamingLLM: true, prefill_local_window_size) instead"),
    "use_qk_layernorm": (False, "QK LayerNorm is not implemented"),
    "mlp_type": ("regular", "write activation: swiglu (with intermediate_size and mlp_multiple_of) for a Llama MLP"),
    "autotuning": (None, "DeepSpeed autotuning is not wired into deepy.py"),
    "s3_path": (None, "uploading checkpoints to S3 is not implemented"),
    "use_bnb_optimizer": (False, "bitsandbytes optimizers are not implemented"),
    "log_gradient_noise_scale": (False, "gradient-noise-scale logging is not implemented"),
    "fp16_lm_cross_entropy": (False, "the loss is always computed in fp32"),
    "apply_query_key_layer_scaling": (False, "query-key layer scaling is not implemented"),
    "scheduler": (None, "the learning-rate schedule comes from the lr_* keys, not a DeepSpeed scheduler"),
    "amp": (None, "Apex AMP is not used; set precision instead"),
    "dataset_impl": ("gpt2", "only GPT-style language-modelling data is implemented (no pairwise or reward datasets)"),
    "pack_impl": ("packed", "documents are always packed into samples (GPT-NeoX's packed)"),
    "allow_chopped": (True, "documents are always chopped across samples (GPT-NeoX's packed)"),
}

# Values of existing fields that GPT-NeoX accepts but we do not implement yet.
UNSUPPORTED_VALUES: dict[str, dict[Any, str]] = {
    "pos_emb": {"rpe": "T5 relative position buckets are not implemented; use rotary, alibi, learned, sinusoidal or none"},
    "norm": {"scalenorm": "ScaleNorm is not implemented; use layernorm or rmsnorm"},
    "init_method": {"single_residual_scaled_normal": "not implemented; use scaled_normal, small_init or wang_init"},
    "output_layer_init_method": {"single_residual_scaled_normal": "not implemented; use wang_init or scaled_normal"},
    "output_layer_parallelism": {"row": "GPT-NeoX itself only supports column"},
    "data_impl": {"cached": "the data loader reads the mmap format only; use mmap (or infer)"},
}
