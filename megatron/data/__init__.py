"""Data pipeline: tokenizers, the Megatron MMIDIDX indexed format, GPT datasets and loaders.

Modules import lazily what they need: `indexed_format` and `tokenizers` stay free of torch and
megatron-core so that tools/preprocess_data.py starts fast.
"""
