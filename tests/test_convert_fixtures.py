"""Shared helpers (no tests) for the conversion, generation and evaluation tests: a tiny BPE
tokenizer, tiny model configs of each shape, and checkpoints written by the trainer's save code."""
from __future__ import annotations

import importlib.util
import os
import string
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were "
    "striking thirteen! Was it? Yes; maybe: later.\n\tA second line, with commas, and more words.\n"
)
# Trains the tokenizer, with TEXT: enough pairs for 300 tokens.
EXTRA_TEXT = (
    "Separators soak up attention: commas, periods, question marks and newlines. Each query sees the initial tokens, "
    "every earlier separator and a local window of neighbours; the rest is masked. Training keeps the same rule as "
    "generation, so the converted model must keep it too! Numbers 0123456789 and CAPITALS ABCDEFGHIJKLMNOPQRSTUVWXYZ.\n"
)
VOCAB_ROWS = 320  # the 300-token tokenizer padded to a multiple of 64

NEOX = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=64, max_position_embeddings=64,
            pos_emb="rotary", rotary_pct=0.25, gpt_j_residual=True, no_weight_tying=True)
LLAMA = dict(num_layers=2, hidden_size=32, num_attention_heads=4, num_kv_heads=2, seq_length=64,
             max_position_embeddings=64, pos_emb="rotary", norm="rmsnorm", rms_norm_epsilon=1e-6,
             activation="swiglu", mlp_multiple_of=16, use_bias_in_norms=False, use_bias_in_attn_linear=False,
             use_bias_in_mlp=False, no_weight_tying=True)
FULL = dict(USE_ORIGINAL_FULL_ATTEN=True, USE_SEP_ATTN_KERNEL_ACCELERATOR=False)


@pytest.fixture(scope="module", autouse=True)
def restore_environ():
    """Undo the RANK / WORLD_SIZE / MASTER_PORT ... that an in-process init_distributed() sets, so
    that training subprocesses started by later test modules pick their own free port.

    Import it into every test module that saves or loads checkpoints in-process.
    """
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def sepllm(window: int = 4, **extra) -> dict:
    """SepLLM settings with window `window` for prefill and generation (overridable in `extra`)."""
    return {**dict(USE_SEP_ATTN_KERNEL_ACCELERATOR=False, init_tok_max_idx=1, prefill_local_window_size=window,
                   generate_local_window_size=window), **extra}


def make_tokenizer(folder: Path) -> Path:
    """A 300-token byte-level BPE (with <|endoftext|> and <|padding|>) as tokenizer.json in `folder`.

    Its alphabet is printable ASCII only, so every token decodes to readable text and generated
    texts can be compared as strings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = sorted(set("".join(piece for piece, _ in byte_level.pre_tokenize_str(string.printable))))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([TEXT + EXTRA_TEXT] * 10, trainer)
    assert tok.get_vocab_size() == 300
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def separator_ids(vocab_file: Path) -> list[int]:
    from megatron.data.tokenizers import build_tokenizer

    tok = build_tokenizer("HFTokenizer", str(vocab_file))
    return [i for i in (tok.single_token_id(s) for s in ".,?!;: \t\n") if i is not None]


def write_config(path: Path, vocab_file: Path, save: Path, **keys) -> Path:
    values = dict(tokenizer_type="HFTokenizer", vocab_file=str(vocab_file), make_vocab_size_divisible_by=64,
                  separator_token_ids=separator_ids(vocab_file), save=str(save), load=str(save), precision="fp32",
                  seed=3, **keys)
    path.write_text(yaml.safe_dump(values))
    return path


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values in every tensor: norms at 1 and biases at 0 would hide swapped tensors.

    Norm gains stay near 1 and their biases small, so that the logits depend on the input rather
    than on the final norm's bias (a model that always predicts one token tests nothing).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def save_checkpoint_of(config: Path, seed: int = 0, iteration: int = 5):
    """Our GPTModel of `config`, randomised, saved by the trainer's save_checkpoint (ZeRO 0); returns (args, model)."""
    from megatron.parallel.distributed import init_distributed

    env = init_distributed()
    import deepspeed

    from megatron.checkpointing.checkpoint import save_checkpoint
    from megatron.model import GPTModel
    from megatron.neox_arguments import NeoXArgs

    args = NeoXArgs.from_files([str(config)])
    model = GPTModel(args.model, args.sepllm, VOCAB_ROWS)
    randomise(model, seed)
    engine, _, _, _ = deepspeed.initialize(model=model, config={"train_micro_batch_size_per_gpu": 1}, dist_init_required=False)
    save_checkpoint(engine, args.checkpoint.save, iteration, client_state={}, config_yaml=args.to_yaml(), rank=env.rank)
    return args, model.eval()


def sepllm_checkpoint(folder: Path, save: Path, seed: int = 0):
    """A SepLLM (window 4) NeoX-shaped checkpoint saved in `save`, with its tokenizer and cfg.yml in
    `folder`; returns (config path, args, model)."""
    vocab = make_tokenizer(folder / "tok")
    config = write_config(folder / "cfg.yml", vocab, save, **NEOX, **sepllm(4))
    args, model = save_checkpoint_of(config, seed=seed)
    return config, args, model


def sample_ids(vocab_file: Path, batch: int = 2) -> torch.Tensor:
    """Real text (with separators) as token ids, [batch, L]."""
    from megatron.data.tokenizers import build_tokenizer

    ids = build_tokenizer("HFTokenizer", str(vocab_file)).tokenize(TEXT)[:48]
    return torch.tensor([ids[i:] + ids[:i] for i in range(batch)])


def load_tool(name: str):
    """A tools/ script as a module (its main(argv) runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
