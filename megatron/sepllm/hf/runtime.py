"""SepLLMRuntime: SepLLM on a loaded transformers causal LM, without editing transformers.

Two hooks, both public transformers / PyTorch extension points:
  * an attention function registered in transformers' `AttentionInterface` under the name
    "sepllm"; it builds the SepLLM mask of each layer and calls the model's own sdpa or eager
    attention with it (the model's `config._attn_implementation` is switched to "sepllm");
  * a forward pre-hook on the model that hands each forward's token ids and padding mask to
    the runtime (and to a `SepCache`, when one is passed as past_key_values).

Mask mode (any other cache, or none): every KV stays in memory and the SepLLM rule is applied
as a mask, at prefill (prefill windows) and decoding (generate windows) — for accuracy studies;
it reports the kept-KV ratio as upstream does. Cache mode (past_key_values is a SepCache): the
cache keeps only initial, separator and local entries and the mask says which of them each query
sees (see megatron.sepllm.cache).
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import torch
from transformers import AttentionInterface

from megatron.neox_arguments.sepllm import SepLLMArgs
from megatron.sepllm.hf import families
from megatron.sepllm.hf.sepcache import SepCache
from megatron.sepllm.mask import FIXLLM, FULL, SEPLLM, attention_mode, prefill_windows

ATTN_NAME = "sepllm"
BASES = ("sdpa", "eager")


def _sepllm_attention(module, query, key, value, attention_mask, **kwargs):
    runtime = getattr(module, "_sepllm_runtime", None)
    if runtime is None:
        raise RuntimeError("the model's attention implementation is 'sepllm' but this layer has no SepLLM runtime; call apply_sepllm(model) (or remove_sepllm to undo)")
    return runtime.attention(module, query, key, value, **kwargs)


AttentionInterface.register(ATTN_NAME, _sepllm_attention)


class _History:
    """Token ids and validity of every position a mask-mode (full) KV cache holds."""

    def __init__(self, ids: torch.Tensor, valid: torch.Tensor):
        self.ids, self.valid = ids, valid

    def append(self, ids: torch.Tensor, valid: torch.Tensor) -> None:
        if ids.shape[0] != self.ids.shape[0]:
            raise RuntimeError(f"batch size changed from {self.ids.shape[0]} to {ids.shape[0]} while reusing a cache")
        self.ids = torch.cat([self.ids, ids], 1)
        self.valid = torch.cat([self.valid, valid], 1)

    def select(self, rows: torch.Tensor) -> None:
        rows = rows.to(self.ids.device)
        self.ids, self.valid = self.ids.index_select(0, rows), self.valid.index_select(0, rows)


# The cache methods by which transformers moves batch rows (beam search reorders the beams after
# every step): the mask-mode history must follow them, or a beam is masked by another's separators.
_ROW_METHODS = {
    "reorder_cache": lambda h, beam_idx: h.select(beam_idx),
    "batch_select_indices": lambda h, indices: h.select(indices),
    "batch_repeat_interleave": lambda h, repeats: h.select(torch.arange(h.ids.shape[0]).repeat_interleave(repeats)),
}


class SepLLMRuntime:
    """Applies SepLLM settings to one model; created by `apply_sepllm`."""

    def __init__(self, model, args: SepLLMArgs, separator_ids: list[int], base: str):
        if base not in BASES:
            raise ValueError(f"SepLLM runs on the model's 'sdpa' or 'eager' attention, not {base!r}; load the model with attn_implementation='sdpa' or 'eager'")
        self.model = model
        self.args = args
        self.mode = attention_mode(args)
        self.separator_ids = separator_ids
        self.base = base
        self.num_layers = families.num_layers(model)
        self._rotary = None
        self._history: Optional[_History] = None
        self._history_cache = None  # the cache object the history describes
        self._positional: Optional[list[str]] = None  # the model forward's positional parameter names
        self._cache: Optional[SepCache] = None
        self._q = 0
        self._masks: dict = {}
        self._forwards = 0
        self._seen_keys = torch.zeros((), dtype=torch.float64)
        self._causal_keys = torch.zeros((), dtype=torch.float64)
        self._layer_ratios: list[torch.Tensor] = []
        self._last_ratio: Optional[torch.Tensor] = None
        self._eager = None

    # -------------------------------------------------------------------------- installation
    def install(self) -> "SepLLMRuntime":
        self._prev_impl = self.model.config._attn_implementation
        for m in families.attention_modules(self.model):
            m._sepllm_runtime = self
        self._hook = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        _set_attn_impl(self.model, ATTN_NAME)
        return self

    def remove(self) -> None:
        """Undo `install`: the model runs its original attention again."""
        self._hook.remove()
        for m in families.attention_modules(self.model):
            if getattr(m, "_sepllm_runtime", None) is self:
                del m._sepllm_runtime
        _set_attn_impl(self.model, self._prev_impl)

    @property
    def rotary(self):
        if self._rotary is None:
            self._rotary = families.rotary_spec(self.model)
        return self._rotary

    # ------------------------------------------------------------------------ per forward pass
    def _by_name(self, module, args: tuple, kwargs: dict) -> dict:
        """The forward's arguments as keywords (an attention mask or cache may come positionally)."""
        if not args:
            return kwargs
        if self._positional is None:
            import inspect

            kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            self._positional = [p.name for p in inspect.signature(module.forward).parameters.values() if p.kind in kinds]
        if len(args) > len(self._positional):
            raise TypeError(f"{type(module).__name__}.forward takes {len(self._positional)} positional arguments, got {len(args)}")
        named = dict(zip(self._positional, args))
        twice = sorted(set(named) & set(kwargs))
        if twice:
            raise TypeError(f"{type(module).__name__}.forward got multiple values for {', '.join(twice)}")
        return {**named, **kwargs}

    def _follow_rows(self, cache) -> None:
        """Make the mask-mode history follow the row moves of `cache` (once per cache object)."""
        if cache is None or getattr(cache, "_sepllm_follower", None) is self:
            return
        for name, move in _ROW_METHODS.items():
            original = getattr(cache, name, None)
            if original is None:
                continue

            def moved(*a, _original=original, _move=move, **k):
                out = _original(*a, **k)
                if self._history is not None and self._history_cache is cache:
                    _move(self._history, *a, **k)
                return out

            setattr(cache, name, moved)
        cache._sepllm_follower = self

    def _pre_forward(self, module, args: tuple, kwargs: dict):
        kwargs, args = self._by_name(module, args, kwargs), ()
        ids = kwargs.get("input_ids")
        if ids is None:
            raise ValueError("SepLLM needs input_ids in every forward pass (inputs_embeds carry no token ids to find separators)")
        q = ids.shape[1]
        mask2d = kwargs.get("attention_mask")
        if mask2d is not None and mask2d.dim() != 2:
            raise ValueError(f"SepLLM builds its own attention masks; pass a 2D padding mask, not a {mask2d.dim()}D one")
        valid = mask2d[:, -q:].to(device=ids.device, dtype=torch.bool) if mask2d is not None else torch.ones_like(ids, dtype=torch.bool)
        cache = kwargs.get("past_key_values")
        self._q = q
        self._masks = {}
        self._forwards += 1
        if self._layer_ratios:
            self._last_ratio = torch.stack(self._layer_ratios).mean(0)
            self._layer_ratios = []
        if self.args.PRINT_KV_RATIO and self._forwards % max(1, int(self.args.print_ratio_intervals)) == 0:
            print(f"[SepLLM] {self.kv_report()}", flush=True)
        if isinstance(cache, SepCache):
            core = cache.core
            if core.separator_ids is None:
                core.separator_ids = list(self.separator_ids)
            if core.pos_shift and core.rotary is None:
                core.rotary = self.rotary
            plan = core.begin(ids, valid)
            self._cache, self._history = cache, None
            # The cache decides positions: stream positions, or positions inside the cache when shifting.
            kwargs["position_ids"] = plan.new_positions
        else:
            self._cache = None
            past = cache.get_seq_length() if cache is not None else 0
            self._follow_rows(cache)
            if past == 0 or self._history is None:
                if past != 0:
                    raise RuntimeError("SepLLM mask mode joined a cache it has not seen from the start; start generation with a fresh cache")
                self._history = _History(ids, valid)
                self._history_cache = cache
            elif self._history.ids.shape[1] != past:
                raise RuntimeError(f"SepLLM mask mode tracked {self._history.ids.shape[1]} tokens but the cache holds {past}; use a fresh cache per generation")
            else:
                self._history.append(ids, valid)
        return args, kwargs

    # ------------------------------------------------------------------------------ attention
    def attention(self, module, query, key, value, **kwargs):
        layer = module.layer_idx
        # Models with sliding-window layers (Mistral v0.1, Qwen2, Gemma 2 ...) pass their window here.
        sliding = kwargs.pop("sliding_window", None)
        if self._cache is not None:
            if sliding is not None:
                raise ValueError(f"layer {layer} attends within a sliding window of {sliding} tokens, which SepCache does "
                                 "not model (it keeps initial and separator tokens from the whole stream); use SepLLM's "
                                 "mask mode (no SepCache) with this model, which applies both")
            mask = self._cache.core.attention_mask()
        else:
            mask = self._mask_mode_mask(layer, sliding)
        if mask.shape[-1] != key.shape[2]:
            raise RuntimeError(f"layer {layer}: SepLLM mask covers {mask.shape[-1]} keys but attention got {key.shape[2]}")
        self._count(layer, mask)
        kwargs.pop("is_causal", None)
        # An additive float mask: PyTorch's CPU SDPA is several times slower with broadcast bool masks.
        # Built once per forward for each mask object (the cache hands every layer the same one); the
        # entry holds the mask itself so that its id cannot be reused by another tensor.
        fkey = (id(mask), query.dtype, query.device)
        if fkey not in self._masks:
            fmask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, torch.finfo(query.dtype).min)
            self._masks[fkey] = (mask, fmask)
        fmask = self._masks[fkey][1]
        if self.base == "eager":
            out = self._eager_fn(module)(module, query, key, value, fmask, **kwargs)
        else:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            out = sdpa_attention_forward(module, query, key, value, fmask, **kwargs)
        if self._cache is not None:
            self._cache.core.finish_layer(layer)
        return out

    def _eager_fn(self, module):
        if self._eager is None:
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if fn is None:
                raise RuntimeError(f"{type(module).__module__} has no eager_attention_forward; use base 'sdpa'")
            self._eager = fn
        return self._eager

    def window(self, layer: int, decoding: bool) -> Optional[int]:
        """Local window of `layer` (None: full causal attention)."""
        a = self.args
        if self.mode == FULL:
            return None
        if decoding:
            return int(a.generate_win_loc_size_list[layer]) if a.USE_GENERATE_LOCAL_WIN_SIZES_wrt_LAYERS else int(a.generate_local_window_size)
        return prefill_windows(a, self.num_layers)[layer]

    def _kept(self, layer: int, h: _History) -> Optional[torch.Tensor]:
        a = self.args
        if a.BATCH_ADAPTIVE_INIT_POS:
            offsets = h.valid.long().cumsum(1) - 1  # from each row's first real token
        else:
            offsets = torch.arange(h.ids.shape[1], device=h.ids.device).expand_as(h.ids)
        kept = h.valid & (offsets >= 0) & (offsets <= a.init_tok_max_idx)
        if self.mode == SEPLLM:
            seps = torch.as_tensor(self.separator_ids, device=h.ids.device, dtype=h.ids.dtype)
            kept = kept | (h.valid & torch.isin(h.ids, seps))
        elif self.mode == FIXLLM:
            k = int(a.fixed_sep_intervals_list[layer])
            kept = kept | (h.valid & (offsets >= 0) & (offsets % k == k - 1))
        return kept

    def _mask_mode_mask(self, layer: int, sliding: Optional[int] = None) -> torch.Tensor:
        h = self._history
        T, q = h.ids.shape[1], self._q
        decoding = q == 1 and T > 1
        window = self.window(layer, decoding)
        if window is not None and window >= T:
            window = None  # the window covers everything: plain causal attention
        if sliding is not None and sliding >= T:
            sliding = None
        interval = int(self.args.fixed_sep_intervals_list[layer]) if self.mode == FIXLLM else None
        key = (window, interval, sliding)
        if key not in self._masks:
            device = h.ids.device
            i = torch.arange(T - q, T, device=device)[:, None]
            j = torch.arange(T, device=device)[None, :]
            mask = (j <= i)[None] & (h.valid[:, None, :] | (j == i)[None])
            if window is not None:
                near = (i - j < window) if self.args.EXCLUDE_DIAGONAL else (i - j <= window)
                mask = mask & (near[None] | self._kept(layer, h)[:, None, :])
            if sliding is not None:  # the model's own window, as transformers' sliding-window masks draw it
                mask = mask & (i - j < sliding)[None]
            self._masks[key] = mask[:, None]
        return self._masks[key]

    # ---------------------------------------------------------------------------- statistics
    def _count(self, layer: int, mask: torch.Tensor) -> None:
        """Share of the causal (non-padding) keys the queries see: the kept-KV / attention-map ratio."""
        if self._cache is not None:
            return  # cache mode: the cache knows its kept ratio (kv_report asks it), the same in every layer
        h = self._history
        T, q = h.ids.shape[1], self._q
        causal = (torch.arange(T, device=mask.device)[None, :] <= torch.arange(T - q, T, device=mask.device)[:, None])[None] & h.valid[:, None, :]
        seen = (mask[:, 0] & causal).sum(-1).double()  # [B, q]
        total = causal.sum(-1).double().clamp(min=1)
        real = h.valid[:, -q:]
        self._seen_keys = self._seen_keys.to(mask.device) + seen[real].sum()
        self._causal_keys = self._causal_keys.to(mask.device) + total[real].sum()
        self._layer_ratios.append(seen[:, -1] / total[:, -1])

    def kv_report(self) -> dict[str, Any]:
        """Kept-KV ratio of the newest token (mean over rows) and the attention-map ratio so far."""
        report = {"mode": "sepcache" if self._cache is not None else self.mode, "forwards": self._forwards}
        if self._cache is not None:
            report["kv_ratio"] = self._cache.kv_ratio()  # keys held / tokens seen, after the last chunk
        else:
            ratio = torch.stack(self._layer_ratios).mean(0) if self._layer_ratios else self._last_ratio
            if ratio is not None:
                report["kv_ratio"] = float(ratio.mean())
        if float(self._causal_keys) > 0:
            report["attn_map_ratio"] = float(self._seen_keys / self._causal_keys)
        return report


def _set_attn_impl(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            return
        except (ValueError, TypeError, AttributeError):
            pass
    model.config._attn_implementation = name
