"""DataArgs: which token datasets to read and how to batch them (group `data`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron.neox_arguments.field import arg


@dataclass
class DataArgs:
    """Training data (group `data`). Give either data_path or all of train/valid/test_data_paths."""

    data_path: Optional[str] = arg(None, "Prefix of one tokenized dataset (prefix.bin/prefix.idx) split into train/valid/test by `split`.")
    train_data_paths: Optional[list[str]] = arg(None, "Prefixes of the training datasets (blended by train_data_weights).")
    valid_data_paths: Optional[list[str]] = arg(None, "Prefixes of the validation datasets.")
    test_data_paths: Optional[list[str]] = arg(None, "Prefixes of the test datasets.")
    train_data_weights: Optional[list[float]] = arg(None, "Sampling weight of each training dataset; None weighs them equally.")
    valid_data_weights: Optional[list[float]] = arg(None, "Sampling weight of each validation dataset; None weighs them equally.")
    test_data_weights: Optional[list[float]] = arg(None, "Sampling weight of each test dataset; None weighs them equally.")
    train_label_data_paths: Optional[list[str]] = arg(None, "Label datasets, one per train_data_paths entry and aligned with it token for token (GPT-NeoX's SFT data): a position's label is the target predicted from the token before it; a negative label (-100) leaves that prediction out of the loss.")
    valid_label_data_paths: Optional[list[str]] = arg(None, "Label datasets, one per valid_data_paths entry (as train_label_data_paths).")
    test_label_data_paths: Optional[list[str]] = arg(None, "Label datasets, one per test_data_paths entry (as train_label_data_paths).")
    split: str = arg("969, 30, 1", "Train, validation and test proportions of data_path, e.g. '949,50,1'.")
    data_impl: str = arg("infer", "Indexed-dataset format: infer, mmap or cached (only mmap is read; not acted on).", choices=("infer", "mmap", "cached"))
    mmap_warmup: bool = arg(False, "Read the data files once before training (not acted on: they are memory-mapped and read on demand).")
    num_workers: int = arg(2, "DataLoader worker processes per rank.")
    reset_position_ids: bool = arg(False, "Restart position ids after each end-of-document token.")
    reset_attention_mask: bool = arg(False, "Stop attention across end-of-document tokens.")
    eod_mask_loss: bool = arg(False, "Exclude end-of-document tokens from the loss.")
    weight_by_num_documents: bool = arg(False, "Weigh datasets by their document counts (replaces the *_data_weights).")
    data_cache_path: Optional[str] = arg(None, "Folder for the dataset index caches; default: beside the data (set it when the data folder is read-only).")
    weighted_sampler_alpha: float = arg(1.0, "Exponent alpha of the document-count weighting (p ~ n^alpha; only with weight_by_num_documents).")

    def split_fractions(self) -> tuple[float, float, float]:
        """`split` as train/valid/test fractions summing to 1."""
        parts = [float(p) for p in self.split.replace("/", ",").split(",")]
        parts += [0.0] * (3 - len(parts))
        total = sum(parts)
        return (parts[0] / total, parts[1] / total, parts[2] / total)
