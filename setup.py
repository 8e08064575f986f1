from setuptools import find_namespace_packages, setup

setup(
    name="sepllm-neox",
    version="0.1.0",
    description="GPT-NeoX-style pretraining framework for SepLLM",
    # `megatron` is a namespace package shared with megatron-core's `megatron.core`.
    packages=find_namespace_packages(include=["megatron.*"], exclude=["megatron.core*"]),
    python_requires=">=3.10",
)
