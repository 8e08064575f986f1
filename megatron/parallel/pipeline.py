"""Pipeline parallelism: a DeepSpeed PipelineModule made of a built GPTModel's own stages.

The model's stages (embedding, blocks, final norm, output layer; see GPTModel.stages) are wrapped,
not redefined: each wrapper holds the model's module under the same attribute name and passes
a tuple along the pipeline,

    first stage input      (input_ids, position_ids[, doc_ids])
    between stages         (hidden, input_ids, position_ids[, doc_ids])
    last stage output      logits (this rank's vocabulary slice under tensor parallelism)

so every stage rebuilds the SepLLM plan, rotary tables and ALiBi positions from the [B, L] token
tensors (O(B*L) bytes on the wire, never an L x L mask). doc_ids travels only when
reset_attention_mask is on; the tuple's length is fixed for a run, as DeepSpeed requires.

With tied embeddings the word embedding lives on the first and the last stage (DeepSpeed's
TiedLayerSpec all-reduces its gradient between the two).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Callable, Optional

import torch
from torch import nn

TIED_KEY = "word_embeddings"
TIED_ATTR = "embedding.word_embeddings.weight"


def _tokens(inputs: tuple) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    input_ids, position_ids, *doc = inputs
    return input_ids, position_ids, (doc[0] if doc else None)


class EmbeddingPipe(nn.Module):
    def __init__(self, embedding: nn.Module, context_builder) -> None:
        super().__init__()
        self.embedding = embedding
        self._context_builder = context_builder  # not a module: shared with the blocks of this stage

    def forward(self, inputs: tuple) -> tuple:
        input_ids, position_ids, doc_ids = _tokens(inputs)
        ctx = self._context_builder(input_ids, position_ids, doc_ids)
        return (self.embedding(input_ids, ctx), *inputs)


class TransformerBlockPipe(nn.Module):
    """One transformer block. The class name matches pipe_partition_method 'type:transformer'."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, inputs: tuple) -> tuple:
        hidden, *tokens = inputs
        input_ids, position_ids, doc_ids = _tokens(tuple(tokens))
        return (self.block(hidden, input_ids, position_ids, doc_ids), *tokens)


class FinalNormPipe(nn.Module):
    def __init__(self, final_norm: nn.Module) -> None:
        super().__init__()
        self.final_norm = final_norm

    def forward(self, inputs: tuple) -> torch.Tensor:
        return self.final_norm(inputs[0])


class OutputPipe(nn.Module):
    def __init__(self, output_layer: nn.Module) -> None:
        super().__init__()
        self.output_layer = output_layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output_layer(hidden)


def _tied_logits(output_layer: nn.Module, embedding_pipe: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    return output_layer(hidden, embedding_pipe.embedding.word_embeddings.weight)


def layer_specs(model: nn.Module) -> list:
    """The pipeline's layers, in order: index 0 embedding, 1..N blocks, N+1 final norm, N+2 output."""
    from deepspeed.pipe import TiedLayerSpec

    tied = model.output_layer.weight is None
    if tied:
        first = TiedLayerSpec(TIED_KEY, EmbeddingPipe, model.embedding, model.context_builder, tied_weight_attr=TIED_ATTR)
        last = TiedLayerSpec(TIED_KEY, EmbeddingPipe, model.embedding, model.context_builder,
                             forward_fn=partial(_tied_logits, model.output_layer), tied_weight_attr=TIED_ATTR)
    else:
        first = EmbeddingPipe(model.embedding, model.context_builder)
        last = OutputPipe(model.output_layer)
    return [first, *(TransformerBlockPipe(b) for b in model.layers), FinalNormPipe(model.final_norm), last]


# Pipeline layer index + name inside the wrapper <-> the GPTModel parameter name.
_BLOCK = re.compile(r"^block\.")


def model_name(layer_index: int, name: str, num_layers: int) -> str:
    """The GPTModel name of parameter `name` of pipeline layer `layer_index`."""
    if 1 <= layer_index <= num_layers:
        return f"layers.{layer_index - 1}." + _BLOCK.sub("", name)
    return name  # embedding.*, final_norm.*, output_layer.* keep their names


def layer_of(model_param: str, num_layers: int) -> int:
    """The pipeline layer index holding GPTModel parameter `model_param`."""
    if model_param.startswith("embedding."):
        return 0
    if model_param.startswith("layers."):
        return int(model_param.split(".")[1]) + 1
    if model_param.startswith("final_norm."):
        return num_layers + 1
    if model_param.startswith("output_layer."):
        return num_layers + 2
    raise ValueError(f"parameter {model_param!r} does not belong to any pipeline stage")


def pipe_name(model_param: str, num_layers: int) -> str:
    """The name of GPTModel parameter `model_param` inside its pipeline layer wrapper."""
    if model_param.startswith("layers."):
        return "block." + model_param.split(".", 2)[2]
    return model_param


def build_pipeline(
    model: nn.Module,
    *,
    topology,
    loss_fn: Callable,
    partition_method: str,
    checkpoint_interval: int,
):
    """DeepSpeed PipelineModule over `model`'s stages; layers of other stages are released.

    Activation checkpointing (every `checkpoint_interval` blocks, 0 for none) uses DeepSpeed's
    checkpoint function, which honours partition_activations (see parallelize.configure_checkpointing).
    """
    from deepspeed.pipe import PipelineModule

    specs = layer_specs(model)
    try:
        pipe = PipelineModule(
            layers=specs, topology=topology, loss_fn=loss_fn, partition_method=partition_method,
            activation_checkpoint_interval=checkpoint_interval,
            checkpointable_layers=[TransformerBlockPipe.__name__],
        )
    except (NotImplementedError, ValueError, AssertionError) as exc:
        raise ValueError(
            f"pipe_partition_method {partition_method!r} cannot split the model: {exc}. Use 'type:transformer|mlp' "
            "(balance transformer layers), 'parameters' or 'uniform'"
        ) from exc
    # Free this process's copy of what other stages own (the model was built whole).
    start, stop = pipe.parts[pipe.stage_id], pipe.parts[pipe.stage_id + 1]
    for index, spec in enumerate(specs):
        if isinstance(spec, nn.Module) and not start <= index < stop:
            spec.to("meta")
    if TIED_KEY not in pipe.tied_modules and model.output_layer.weight is None:
        model.embedding.to("meta")  # a middle stage: the tied specs still reference the embedding
    return pipe
