"""The training loop: build the pieces from a NeoXArgs config, then train, evaluate, save.

Each piece lives in its own module (model, data, optimizer, schedule, checkpoint, logging);
this file only wires them together and runs the loop.
"""
from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from megatron.parallel.distributed import DistEnv, barrier, init_distributed, shutdown_distributed


@dataclass
class TrainState:
    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class Trainer:
    def __init__(self, args, env: Optional[DistEnv] = None):
        self.args = args
        self.env = env or init_distributed(args.parallel.distributed_backend, args.launcher)
        self._build()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from megatron.data.tokenizers import build_tokenizer
        from megatron.model import GPTModel, count_parameters, padded_vocab_size
        from megatron.parallel.parallelize import parallelize
        from megatron.training.lr_schedule import AnnealingLR
        from megatron.training.optimizer import build_optimizer

        a, env = self.args, self.env
        set_seed(a.training.seed)
        self.tokenizer = build_tokenizer(a.tokenizer.tokenizer_type, a.tokenizer.vocab_file, a.tokenizer.merge_file)
        self.vocab_size = padded_vocab_size(self.tokenizer.vocab_size, a.model.make_vocab_size_divisible_by,
                                            a.parallel.model_parallel_size)
        if a.model.padded_vocab_size is not None:  # e.g. an imported checkpoint's exact embedding rows
            if a.model.padded_vocab_size < self.tokenizer.vocab_size or a.model.padded_vocab_size % a.parallel.model_parallel_size:
                raise ValueError(
                    f"padded_vocab_size {a.model.padded_vocab_size} must be >= the tokenizer's {self.tokenizer.vocab_size} "
                    f"tokens and divisible by model_parallel_size {a.parallel.model_parallel_size}"
                )
            self.vocab_size = a.model.padded_vocab_size
        model = GPTModel(a.model, a.sepllm, self.vocab_size)
        if a.training.checkpoint_activations:
            model.enable_activation_checkpointing(a.training.checkpoint_num_layers)
        self.num_params = count_parameters(model)
        self.num_params_non_embedding = count_parameters(model, exclude_embeddings=True)
        # Tensor, sequence, pipeline and data parallelism are applied from outside the model.
        self.parallel = parallelize(model, a, env.world_size, env.rank)
        optimizer = build_optimizer(self.parallel.module, a.optimizer.optimizer, a.optimizer.weight_decay, env.device,
                                    offload=a.optimizer.offload_device == "cpu")
        self.scheduler = AnnealingLR(
            optimizer, max_lr=a.optimizer.lr, min_lr=a.lr.min_lr, warmup=a.lr.warmup,
            decay_iters=a.lr.decay_iters(a.training.train_iters), style=a.lr.lr_decay_style,
        )
        self.dp_size, self.dp_rank = self.parallel.dp_size, self.parallel.dp_rank
        self._preloaded = None
        if a.checkpoint.load and a.optimizer.zero_stage == 3:
            from megatron.checkpointing.checkpoint import preload_module

            # ZeRO-3 reads only its own files: a converted, resharded or stage 0-2 checkpoint loads here,
            # into the whole module, before DeepSpeed partitions it.
            self._preloaded = preload_module(self.parallel.module, a.checkpoint.load, iteration=a.checkpoint.iteration)
        self.engine = self.parallel.initialize(optimizer, self.scheduler, a.deepspeed_config(self.dp_size))
        if a.optimizer.zero_stage != self.engine.zero_optimization_stage():
            self._print(f"ZeRO stage {a.optimizer.zero_stage} runs as stage {self.engine.zero_optimization_stage()} "
                        f"over {self.dp_size} data-parallel rank(s) with torch_autocast (it would partition nothing)")
        self.micro_batch = self.engine.train_micro_batch_size_per_gpu()
        self.grad_acc = self.engine.gradient_accumulation_steps()
        self.global_batch = self.micro_batch * self.grad_acc * self.dp_size
        self.state = TrainState()
        self.run_dir = Path(a.logging.log_dir) if a.logging.log_dir else (Path(a.checkpoint.save) if a.checkpoint.save else None)
        if self.run_dir is not None and env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            a.save_yaml(self.run_dir / "config.yml")
        from megatron.checkpointing.export import conversion_problems

        unconvertible = conversion_problems(a)
        if unconvertible:
            self._print("note: generate.py, eval.py and tools/convert_neox_to_hf.py take models through transformers, "
                        "and cannot take this one: " + "; ".join(unconvertible))
        for problem in self._separator_problems():
            self._print("warning: " + problem)
        self._load()
        self.start_iteration = self.state.iteration
        self._build_data()

    def _load(self) -> None:
        from megatron.checkpointing.checkpoint import load_checkpoint

        c = self.args.checkpoint
        if not c.load:
            return
        if self._preloaded is not None:
            from megatron.checkpointing.checkpoint import load_preloaded

            client = load_preloaded(self.engine, self._preloaded, rank=self.env.rank, load_optimizer=not c.no_load_optim,
                                    load_rng=not c.no_load_rng, finetune=c.finetune)
            self._preloaded = None
        else:
            client = load_checkpoint(
                self.engine, c.load, rank=self.env.rank, iteration=c.iteration,
                load_optimizer=not c.no_load_optim, load_rng=not c.no_load_rng, finetune=c.finetune,
                precision=self.args.precision.precision, layout=(self.parallel.layout.tp, self.parallel.layout.pp),
            )
        if client is None:
            self._print(f"no checkpoint found in {c.load}; starting from scratch")
            return
        if not c.finetune:
            self.state = TrainState(**client.get("train_state", {}))
        self._print(f"loaded checkpoint from {c.load} at iteration {self.state.iteration}")

    def _separator_problems(self) -> list[str]:
        """Separator ids that name other tokens under this run's tokenizer (see megatron.sepllm.separators)."""
        from megatron.sepllm.mask import SEPLLM, attention_mode, resolve_token_ids
        from megatron.sepllm.separators import separator_mismatch

        s = self.args.sepllm
        used = [("separator_token_ids", s.separator_token_ids)] if attention_mode(s) == SEPLLM else []
        if s.USE_BiPE:
            used.append(("BiPE_seps", s.BiPE_seps))
        found = (separator_mismatch(self.tokenizer, resolve_token_ids(ids), name) for name, ids in used)
        return [message for message in found if message is not None]

    def _eod(self) -> Optional[int]:
        try:
            return self.tokenizer.eod
        except ValueError:  # a vocabulary without an end-of-document token
            return None

    def _build_data(self) -> None:
        from megatron.data.gpt_dataset import build_train_valid_test_datasets

        a = self.args
        d = a.data
        t = a.training
        eval_runs = (t.train_iters // t.eval_interval + 1) if t.eval_interval else 0
        # A resumed run may evaluate more often than it did, or for more iterations: it needs what it
        # consumed plus what it will still evaluate (the sample order is a prefix of a longer run's).
        runs_left = ((max(t.train_iters - self.state.iteration, 0) // t.eval_interval + 1) if t.eval_interval else 0)
        train_samples = t.train_iters * self.global_batch
        valid_samples = max(eval_runs * t.eval_iters * self.global_batch,
                            self.state.consumed_valid_samples + runs_left * t.eval_iters * self.global_batch)
        test_samples = t.eval_iters * self.global_batch
        self.train_ds, self.valid_ds, self.test_ds = build_train_valid_test_datasets(
            data_path=d.data_path, split=d.split, train_data_paths=d.train_data_paths,
            valid_data_paths=d.valid_data_paths, test_data_paths=d.test_data_paths,
            train_data_weights=d.train_data_weights, valid_data_weights=d.valid_data_weights,
            test_data_weights=d.test_data_weights, train_label_data_paths=d.train_label_data_paths,
            valid_label_data_paths=d.valid_label_data_paths, test_label_data_paths=d.test_label_data_paths,
            weight_by_num_documents=d.weight_by_num_documents,
            weighted_sampler_alpha=d.weighted_sampler_alpha, seq_length=a.model.seq_length, seed=t.seed,
            train_samples=train_samples, valid_samples=valid_samples, test_samples=test_samples,
            vocab_size=self.vocab_size, eod=self._eod() if self.env.rank == 0 else None,  # checked (and said) once
            rank=self.env.rank, barrier=barrier, cache_dir=d.data_cache_path,
        )

        self.train_loader = self._data_loader(self.train_ds, self.state.consumed_train_samples)
        self._valid_consumed_at_start = self.state.consumed_valid_samples
        self.valid_loader = self._data_loader(self.valid_ds, self.state.consumed_valid_samples)
        self.train_iter = iter(self.train_loader) if self.train_loader is not None else None
        self.valid_iter = iter(self.valid_loader) if self.valid_loader is not None else None

    def _data_loader(self, ds, consumed: int, num_workers: Optional[int] = None):
        from megatron.data.loader import build_data_loader

        if ds is None:
            return None
        return build_data_loader(ds, micro_batch_size=self.micro_batch, dp_rank=self.dp_rank, dp_size=self.dp_size,
                                 consumed_samples=consumed, seed=self.args.training.seed,
                                 num_workers=self.args.data.num_workers if num_workers is None else num_workers)

    # ------------------------------------------------------------------ steps
    def _batch(self, data_iter: Iterator) -> dict:
        from megatron.data.batch import get_batch

        d = self.args.data
        item = next(data_iter)
        tokens, labels = (self._to_device(item[k]) if k in item else None for k in ("text", "label"))
        return get_batch(tokens, eod_id=self.tokenizer.eod, reset_position_ids=d.reset_position_ids,
                         reset_attention_mask=d.reset_attention_mask, eod_mask_loss=d.eod_mask_loss, label_tokens=labels)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.env.device.type == "cuda":
            # A copy from pageable memory waits for the device to drain; from pinned memory it is
            # queued behind the running step.
            return t.pin_memory().to(self.env.device, non_blocking=True)
        return t.to(self.env.device)

    def _forward(self, batch: dict) -> torch.Tensor:
        self.parallel.begin_micro_batch()
        logits = self.engine(batch["input_ids"], position_ids=batch["position_ids"], doc_ids=batch["doc_ids"])
        return self.parallel.lm_loss(logits, batch["labels"], batch["loss_mask"])

    def train_step(self) -> dict:
        """One optimizer step. The loss and gradient norm stay device tensors (reading them would
        wait for the step to finish): the loop reads them only when it logs."""
        self.engine.train()
        grad_norm = None
        if self.parallel.pipelined:
            # Every stage reads the batches (only the first and last use them) so loaders stay in step.
            batches = [self._batch(self.train_iter) for _ in range(self.grad_acc)]
            loss = self.engine.train_batch(self.parallel.pipe_batches(batches))  # mean over micro-batches and dp
            batch = batches[-1]
        else:
            losses, targets = [], []
            for _ in range(self.grad_acc):
                batch = self._batch(self.train_iter)
                loss = self._forward(batch)
                self.engine.backward(loss)
                grad_norm = self.parallel.step(self.engine)  # the norm on the last micro-batch, without ZeRO
                losses.append(loss.detach())
                targets.append(batch["loss_mask"].sum())
            loss = self._per_target(losses, targets)
        self.last_batch = batch
        self.state.iteration += 1
        self.state.consumed_train_samples += self.global_batch
        out = {"loss": loss.detach(), "lr": self.scheduler.get_lr()}
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    def evaluate(self) -> Optional[float]:
        """Mean loss over eval_iters batches of the validation split (which advance through it run by run)."""
        if self.valid_iter is None:
            return None
        loss = self._loss_over(self.valid_iter)
        self.state.consumed_valid_samples += self.args.training.eval_iters * self.global_batch
        return loss

    def evaluate_test(self) -> Optional[float]:
        """Mean loss over the first eval_iters batches of the test split (GPT-NeoX's end-of-training test)."""
        if self.test_ds is None or self.args.training.eval_iters == 0:
            return None
        return self._loss_over(iter(self._data_loader(self.test_ds, 0, num_workers=0)))

    @torch.no_grad()
    def _loss_over(self, data_iter) -> float:
        self.engine.eval()
        losses, targets = [], []
        for _ in range(self.args.training.eval_iters):
            batches = [self._batch(data_iter) for _ in range(self.grad_acc)]
            if self.parallel.pipelined:  # eval_batch averages over micro-batches and data-parallel ranks
                losses.append(self.engine.eval_batch(self.parallel.pipe_batches(batches)).reshape(()))
            else:
                losses.extend(self._forward(b) for b in batches)
                targets.extend(b["loss_mask"].sum() for b in batches)
        return float(self._per_target(losses, targets) if targets else torch.stack(losses).mean())

    def _per_target(self, losses: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        """The loss per target over micro-batches and data-parallel ranks: each micro-batch's mean weighted by
        its number of targets, which label datasets make uneven (a micro-batch of prompts alone has none and
        adds nothing); NaN when no micro-batch has a target. A device scalar: nothing is read back here."""
        counts = torch.stack(targets).float()
        both = torch.stack([(torch.stack(losses).float() * counts).sum(), counts.sum()])
        both = self.parallel.mean_over_data_parallel(both)
        return both[0] / both[1]

    def save(self) -> None:
        from megatron.checkpointing.checkpoint import save_checkpoint

        c = self.args.checkpoint
        folder = save_checkpoint(
            self.engine, c.save, self.state.iteration, client_state={"train_state": vars(self.state).copy()},
            config_yaml=self.args.to_yaml(), rank=self.env.rank, keep_last_n=c.keep_last_n_checkpoints,
        )
        self._print(f"saved checkpoint {folder}")

    def _should_save(self, it: int) -> bool:
        c = self.args.checkpoint
        if not c.save:
            return False
        if not hasattr(self, "_save_iters"):
            self._save_iters = set(c.save_iters(self.args.training.train_iters))
        return it in self._save_iters

    # ------------------------------------------------------------------ loop
    def train(self) -> list[float]:
        from megatron.sepllm.mask import attention_mode, build_attention_plan, layer_kept_ratios
        from megatron.training.flops import flops_per_token, peak_tflops
        from megatron.training.logger import MetricsLogger

        a, t, lg = self.args, self.args.training, self.args.logging
        mode = attention_mode(a.sepllm)
        logger = MetricsLogger(
            total_iters=t.train_iters, start_iter=self.state.iteration, tensorboard_dir=lg.tensorboard_dir,
            use_wandb=lg.use_wandb, wandb_project=lg.wandb_project, wandb_group=lg.wandb_group,
            wandb_team=lg.wandb_team, wandb_host=lg.wandb_host, enabled=self.env.is_main,
        )
        self._logger = logger
        logger.message(
            f"model: {self.num_params / 1e6:.2f}M parameters | global batch {self.global_batch} "
            f"(micro {self.micro_batch} x grad acc {self.grad_acc} x dp {self.dp_size}) | attention {mode}"
        )
        if 0 in set(a.checkpoint.extra_save_iters or []) and self.state.iteration == 0 and a.checkpoint.save:
            self.save()
        history: list[float] = []
        window_losses: list[torch.Tensor] = []  # device scalars since the last log, read at the next
        t_log = time.time()
        iters_since_log = 0
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        peak = peak_tflops(device_name)
        forward_passes = 0
        while self.state.iteration < t.train_iters:
            metrics = self.train_step()
            it = self.state.iteration
            if it == self.start_iteration + 1:  # the first step compiled the blocks
                _settle_gc()
            window_losses.append(metrics["loss"])
            iters_since_log += 1
            forward_passes += self.grad_acc
            logger.advance(1)
            log_now = it % lg.log_interval == 0 or it == t.train_iters
            print_ratios = a.sepllm.PRINT_KV_RATIO and forward_passes % a.sepllm.print_ratio_intervals < self.grad_acc
            ratios = None  # of the last batch, one device read for all layers
            if mode != "full" and (log_now or print_ratios):
                plan = build_attention_plan(self.last_batch["input_ids"], a.sepllm, a.model.num_layers,
                                            doc_ids=self.last_batch["doc_ids"])
                ratios = layer_kept_ratios(plan)
            if print_ratios and ratios is not None:
                logger.message(
                    "SepLLM kept ratio per layer: attention map "
                    + " ".join(f"{r['attn_map_ratio']:.3f}" for r in ratios)
                    + " | KV " + " ".join(f"{r['kv_ratio']:.3f}" for r in ratios)
                )
            if log_now:
                window = torch.stack(window_losses).float().tolist()  # the one wait for the device per log
                history.extend(window)
                elapsed = time.time() - t_log
                tokens = iters_since_log * self.global_batch * a.model.seq_length
                attn_ratio = 1.0
                if ratios is not None:
                    attn_ratio = float(np.mean([r["attn_map_ratio"] for r in ratios]))
                fpt = flops_per_token(
                    num_params_non_embedding=self.num_params_non_embedding, num_layers=a.model.num_layers,
                    hidden_size=a.model.hidden_size, seq_length=a.model.seq_length, vocab_size=self.vocab_size,
                    attn_map_ratio=attn_ratio,
                )
                tflops = fpt * tokens / max(elapsed, 1e-9) / 1e12 / self.env.world_size
                row = {
                    "loss": float(np.mean(window)), "lr": metrics["lr"],
                    **({"grad_norm": float(metrics["grad_norm"])} if "grad_norm" in metrics else {}),
                    "tokens_per_s": tokens / max(elapsed, 1e-9), "tflops_per_gpu": tflops,
                }
                if peak:
                    row["mfu"] = tflops / peak
                if ratios is not None:
                    row["sepllm_attn_kept"] = attn_ratio
                logger.log(it, row)
                window_losses.clear()
                iters_since_log = 0
                t_log = time.time()
            if t.eval_interval and it % t.eval_interval == 0 and self.valid_iter is not None:
                val = self.evaluate()
                logger.log(it, {"loss": val, "ppl": math.exp(min(val, 50))}, prefix="valid")
                _settle_gc()  # the first evaluation compiles the blocks' eval graphs
            if self._should_save(it):
                self.save()
            if t.exit_interval and it % t.exit_interval == 0 and it < t.train_iters:
                logger.message(f"exit_interval {t.exit_interval}: stopping at iteration {it} of {t.train_iters}")
                break
        # The final state is saved unless this run trained nothing (a rerun of a finished run must not
        # rewrite the checkpoint that `latest` names) or it was just saved.
        trained = self.state.iteration > self.start_iteration
        if a.checkpoint.save and trained and not self._should_save(self.state.iteration):
            self.save()
        if not trained:
            logger.message(f"nothing to train: iteration {self.state.iteration} >= train_iters {t.train_iters}")
        elif self.state.iteration >= t.train_iters:
            test = self.evaluate_test()
            if test is not None:
                logger.log(self.state.iteration, {"loss": test, "ppl": math.exp(min(test, 50))}, prefix="test")
        logger.close()
        return history

    def _print(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)


def _settle_gc() -> None:
    """Collect once, then exempt every object alive now from later collections (gc.freeze).

    A started trainer holds about half a million long-lived Python objects (DeepSpeed, megatron-core,
    inductor's graphs and guards). Python's full collection walks all of them, 0.1-0.25 s on a CI-class
    CPU, and what the steps allocate sets one off now and then: a stalled step each time. Frozen
    objects are skipped, so later collections walk only what was allocated since (under 1 ms).
    """
    gc.collect()
    gc.freeze()


def pretrain(args) -> list[float]:
    """Train as configured; returns the per-iteration training losses."""
    losses = Trainer(args).train()
    shutdown_distributed()
    return losses
