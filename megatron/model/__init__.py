"""The SepLLM / GPT-NeoX model (single device; see gpt_model.py for the layout)."""
from megatron.model.dimensions import mlp_width, padded_vocab_size, resolve_dims
from megatron.model.gpt_model import GPTModel
from megatron.model.parameters import count_parameters

__all__ = ["GPTModel", "count_parameters", "mlp_width", "padded_vocab_size", "resolve_dims"]
