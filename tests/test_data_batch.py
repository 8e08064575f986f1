"""get_batch: shifted labels, document-aware positions, doc ids that SepLLM masks honour, EOD loss mask."""
from __future__ import annotations

import torch

from megatron.data.batch import get_batch
from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.mask import build_attention_plan, document_ids_from_eod

EOD = 0
TOKENS = torch.tensor([
    [5, 6, 0, 7, 8, 9, 0, 4, 3],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
])


def test_inputs_and_labels_are_shifted_by_one():
    b = get_batch(TOKENS, eod_id=EOD)
    assert torch.equal(b["input_ids"], TOKENS[:, :-1]) and torch.equal(b["labels"], TOKENS[:, 1:])
    assert b["loss_mask"].dtype == torch.float and bool((b["loss_mask"] == 1).all())
    assert torch.equal(b["position_ids"], torch.arange(8).expand(2, 8))
    assert b["doc_ids"] is None


def test_reset_position_ids_restarts_after_each_eod():
    b = get_batch(TOKENS, eod_id=EOD, reset_position_ids=True)
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], list(range(8))]
    assert b["doc_ids"] is None  # attention still crosses documents unless reset_attention_mask


def test_reset_attention_mask_returns_document_ids_and_masks_follow_them():
    b = get_batch(TOKENS, eod_id=EOD, reset_attention_mask=True)
    assert torch.equal(b["doc_ids"], document_ids_from_eod(TOKENS[:, :-1], EOD))
    assert b["doc_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2]  # the EOD belongs to the document it ends
    cfg = SepLLMArgs(separator_token_ids=[6], prefill_local_window_size=2, init_tok_max_idx=0)
    plan = build_attention_plan(b["input_ids"], cfg, num_layers=1, doc_ids=b["doc_ids"])
    mask = plan.dense_mask(0)[:, 0]
    same_doc = b["doc_ids"][:, :, None] == b["doc_ids"][:, None, :]
    assert not bool((mask & ~same_doc).any())
    assert bool(mask[0, 3, 3]) and not bool(mask[0, 3, 1])  # the new document starts fresh


def test_eod_mask_loss_drops_positions_whose_input_is_eod():
    b = get_batch(TOKENS, eod_id=EOD, eod_mask_loss=True)
    assert b["loss_mask"][0].tolist() == [1, 1, 0, 1, 1, 1, 0, 1]
    assert bool((b["loss_mask"][1] == 1).all())


def test_label_tokens_replace_the_targets_and_negative_labels_leave_the_loss():
    labels = TOKENS.clone()
    labels[0, :4] = -100  # a prompt: predicting its tokens 1..3 does not count, predicting token 4 does
    b = get_batch(TOKENS, eod_id=EOD, label_tokens=labels, eod_mask_loss=True)
    assert torch.equal(b["input_ids"], TOKENS[:, :-1])
    assert b["loss_mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 0, 1]  # and EOD inputs still drop out
    assert b["labels"][0].tolist() == [0, 0, 0, 8, 9, 0, 4, 3] and torch.equal(b["labels"][1], TOKENS[1, 1:])
    assert bool((b["labels"] >= 0).all())  # a valid class for cross-entropy everywhere
    try:
        get_batch(TOKENS, eod_id=EOD, label_tokens=labels[:, :-1])
    except ValueError as e:
        assert "label_tokens must have the shape of tokens" in str(e)
    else:
        raise AssertionError("a label window of another shape was accepted")
