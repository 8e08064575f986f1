"""GenerationArgs: text generation and evaluation settings (group `generation`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class GenerationArgs:
    """Text generation (group `generation`)."""

    text_gen_type: Optional[str] = arg(None, "unconditional, input-file or interactive; None means input-file when sample_input_file is set, else unconditional.", choices=("unconditional", "input-file", "interactive"))
    temperature: float = arg(0.0, "Sampling temperature; 0 means greedy decoding.")
    top_k: int = arg(0, "Sample from the k most likely tokens; 0 disables top-k.")
    top_p: float = arg(0.0, "Sample from the smallest token set with probability mass >= top_p; 0 disables top-p.")
    return_logits: bool = arg(False, "Also return the logits of the generated tokens.")
    maximum_tokens: int = arg(64, "Largest number of tokens generated per prompt.")
    prompt_end: str = arg("\n", "String that ends one prompt in the input file and in interactive mode.")
    sample_input_file: Optional[str] = arg(None, "File of prompts, one per prompt_end (input-file mode).")
    sample_output_file: str = arg("samples.txt", "File the generated samples are written to.")
    num_samples: int = arg(1, "Samples to generate in unconditional mode.")
    recompute: bool = arg(False, "Recompute all attention at every step instead of using the KV cache.")
    eval_results_prefix: str = arg("", "Prefix of the evaluation results file.")
    eval_tasks: Optional[list[str]] = arg(None, "Evaluation tasks for eval.py.")

    @property
    def kind(self) -> str:
        """text_gen_type, or what it means when null."""
        return self.text_gen_type or ("input-file" if self.sample_input_file else "unconditional")
