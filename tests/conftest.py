"""Test-session setup shared by every test file."""
import os

import torch

# Without CUDA the Sep-Attention Triton kernels are tested in Triton's interpreter. The variable
# is read when triton is first imported, and transformers imports triton, so it must be set
# here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
