"""Model FLOPs per token, for TFLOP/s and MFU reporting."""
from __future__ import annotations

# Dense bf16 matrix-multiply peak of common GPUs (datasheet, without sparsity), in TFLOP/s.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def flops_per_token(*, num_params_non_embedding: int, num_layers: int, hidden_size: int, seq_length: int,
                    vocab_size: int, attn_map_ratio: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward).

    Matrix multiplies cost 2 FLOPs per parameter per token; causal attention scores and the
    weighted sum cost 2 x 2 x L/2 x hidden per layer per token, scaled by the share of the
    attention map SepLLM actually computes.
    """
    dense = 2 * (num_params_non_embedding + vocab_size * hidden_size)
    attention = 2 * 2 * num_layers * hidden_size * (seq_length / 2) * attn_map_ratio
    return 3.0 * (dense + attention)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None
