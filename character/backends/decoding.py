"""A small batched decode loop for CPU sampling, used by LocalBackend.sample instead of `generate`.

Why: at batch 64 on 2 cores, `generate` spent half of each step outside the model: its top-p warper sorts
the 49k vocabulary for every row, `torch.multinomial` draws an exponential per vocabulary entry, and the
sdpa path copies keys and values once per query head under a padding mask. Here sampling looks at the top-k
candidates only (exactly: rows whose nucleus is wider fall back to a full sort), attention keeps grouped
heads grouped, keys and values go to preallocated buffers, prompt work shared by all rows (the system
prompt, n samples of a conversation) runs once, and finished rows leave the batch. The forward pass is the
model's own, so any causal LM works, PEFT adapters included.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

TOP_K = 256  # candidates looked at before falling back to a full sort for top-p


class _BufferLayer(DynamicLayer):
    """A DynamicLayer that writes into room for the whole generation instead of concatenating each step;
    keys/values are views of the filled part, so attention never reads the empty tail."""

    is_initialized: bool  # set by DynamicLayer (untyped to mypy)

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            self.k_buf = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[3])
            self.v_buf = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[3])
        end = self.length + key_states.shape[-2]
        self.k_buf[:, :, self.length:end], self.v_buf[:, :, self.length:end] = key_states, value_states
        self.length = end
        self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) rows; copies only the filled part, so untouched buffer pages stay uncommitted."""
        k_buf = self.k_buf.new_empty(len(indices), *self.k_buf.shape[1:])
        v_buf = self.v_buf.new_empty(len(indices), *self.v_buf.shape[1:])
        k_buf[:, :, :self.length], v_buf[:, :, :self.length] = self.keys[indices], self.values[indices]
        self.k_buf, self.v_buf = k_buf, v_buf
        self.keys, self.values = k_buf[:, :, :self.length], v_buf[:, :, :self.length]


def _sdpa_grouped(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' "sdpa" attention, minus its per-query-head copies of keys and values under a mask (a
    CUDA workaround). torch's CPU kernel takes enable_gqa with a mask; at batch 64 the copies cost 3 ms per
    layer and step with 100 cached tokens, 40 ms with 300."""
    causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                                           is_causal=causal, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def _register_grouped_attention() -> None:
    """Make "sdpa_grouped" known to transformers, once, when first needed (nothing runs at import time)."""
    global _registered
    if not _registered:
        AttentionInterface.register("sdpa_grouped", _sdpa_grouped)
        AttentionMaskInterface.register("sdpa_grouped", sdpa_mask)
        _registered = True


@contextmanager
def _grouped_attention(model):
    """Switch a CPU "sdpa" model to _sdpa_grouped meanwhile (its layers read the shared config per call)."""
    config = model.config
    if config._attn_implementation != "sdpa" or next(model.parameters()).device.type != "cpu":
        yield
        return
    _register_grouped_attention()
    config._attn_implementation = "sdpa_grouped"
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def _pick(probs: torch.Tensor, ids: torch.Tensor, top_p: float) -> torch.Tensor:
    """Sample within the nucleus of probs (sorted descending; ids are their token ids), as HF's TopP warper."""
    keep = (probs.cumsum(-1) - probs) < top_p  # a token is in if the mass ranked above it is below top_p
    return ids.gather(1, torch.multinomial(probs * keep, 1)).squeeze(1)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else temperature then top-p sampling. Overwrites logits."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.div_(temperature), dim=-1)
    if top_p >= 1.0:  # inverse-CDF draw: one uniform per row instead of one exponential per vocabulary entry
        cdf = probs.cumsum_(-1)
        u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)
    vals, ids = probs.topk(min(TOP_K, probs.shape[-1]))
    out = _pick(vals, ids, top_p)
    wide = vals.sum(-1) < top_p  # nucleus wider than TOP_K: redo those rows over the whole vocabulary
    if wide.any():
        out[wide] = _pick(*probs[wide].sort(-1, descending=True), top_p)
    return out


@torch.inference_mode()
def decode(model, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, stop_ids: list[int],
           temperature: float, top_p: float, repetition_penalty: float = 1.0,
           stop_strings: tuple[str, ...] = (), tokenizer=None, negatives: list[list[int]] | None = None,
           guidance: float = 1.0) -> list[list[int]]:
    """New tokens for each prompt, ending with the stop token if one was sampled. Draws from torch's global RNG.

    negatives (one per prompt) and guidance g != 1: classifier-free guidance. Each step scores the prompt's
    row and its negative's row in one batch (rows [prompts..., negatives...]), samples from
    log p_neg + g (log p - log p_neg), and feeds the sampled token to both rows.
    """
    if not prompts:
        return []
    negatives = negatives if guidance != 1.0 else None
    guided = negatives is not None
    if negatives is not None and len(negatives) != len(prompts):
        raise ValueError(f"decode: {len(negatives)} negatives for {len(prompts)} prompts")
    n_prompts, prompts = len(prompts), prompts + (negatives or [])

    def combine(logits: torch.Tensor) -> torch.Tensor:
        if not guided:
            return logits
        half = len(logits) // 2
        cond, neg = logits[:half].log_softmax(-1), logits[half:].log_softmax(-1)
        return neg + guidance * (cond - neg)
    device = next(model.parameters()).device
    tensor = lambda rows: torch.tensor(rows, device=device)  # noqa: E731
    # Prefill in two parts. The prefix all prompts share runs once at batch 1; then each distinct remainder,
    # left-padded so every row's next token sits at the same position: [shared][pads][own tokens]. Padding
    # in the middle is fine, as the attention mask hides it and positions count unmasked tokens only.
    shared = min(len(os.path.commonprefix(prompts)), min(map(len, prompts)) - 1)
    rests = list(dict.fromkeys(tuple(p[shared:]) for p in prompts))
    row_of = {rest: i for i, rest in enumerate(rests)}
    expand = tensor([row_of[tuple(p[shared:])] for p in prompts])
    width = max(map(len, rests))
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    cache = Cache(layers=[_BufferLayer(shared + width + max_new_tokens) for _ in range(layers)])
    mask = tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rests])
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)

    def forward(ids, mask, positions):
        with _grouped_attention(model):
            return model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=1).logits[:, -1].float()

    if shared:
        forward(tensor([prompts[0][:shared]]), None, positions[:1, :shared])
        cache.batch_select_indices(torch.zeros(len(rests), dtype=torch.long, device=device))
    logits = forward(tensor([[pad_id] * (width - len(r)) + list(r) for r in rests]), mask, positions[:, shared:])
    if len(rests) < len(prompts):
        cache.batch_select_indices(expand)
        logits, mask, positions = logits[expand], mask[expand], positions[expand]
    positions = positions[:, -1:]
    logits = combine(logits)
    prompts = prompts[:n_prompts]
    # Tokens each row has seen, for the repetition penalty. Rows are padded with their own last token: a
    # repeat is harmless, while the pad id (end of turn) must not be penalized for short prompts.
    longest = max(map(len, prompts))
    history = tensor([[p[-1]] * (longest - len(p)) + p for p in prompts]) if repetition_penalty != 1.0 else None
    stops = tensor(stop_ids)
    tail = 4 * max(map(len, stop_strings), default=0) + 2  # enough tokens to hold any stop string
    outs: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))  # the prompt of each batch row
    live = [True] * len(prompts)  # batch rows still generating (finished ones linger until compaction)
    for step in range(max_new_tokens):
        if history is not None:  # as HF's RepetitionPenaltyLogitsProcessor: shrink the scores of seen tokens
            seen = logits.gather(1, history)
            logits.scatter_(1, history, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
        nxt = sample_next(logits, temperature, top_p)
        finished = torch.isin(nxt, stops).tolist()
        for i, (row, token) in enumerate(zip(active, nxt.tolist())):
            if live[i]:
                outs[row].append(token)
                live[i] = not (finished[i] or (bool(stop_strings) and any(
                    s in tokenizer.decode(outs[row][-tail:]) for s in stop_strings)))
        keep = [i for i, alive in enumerate(live) if alive]
        if not keep or step == max_new_tokens - 1:
            break
        history = torch.cat([history, nxt[:, None]], dim=1) if history is not None else None
        mask, positions = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1), positions + 1
        if len(keep) <= 0.75 * len(active):
            # Drop finished rows once they are a quarter of the batch: later steps cost in proportion to the
            # rows left, and the cache copy this takes is paid only a few times per call.
            index = tensor(keep)
            rows = tensor(keep + [len(active) + i for i in keep]) if guided else index  # and their negatives
            cache.batch_select_indices(rows)
            nxt, mask, positions = nxt[index], mask[rows], positions[rows]
            history = history[index] if history is not None else None
            active, live = [active[i] for i in keep], [True] * len(keep)
        feed = torch.cat([nxt, nxt]) if guided else nxt
        logits = combine(forward(feed[:, None], mask, positions))
    return outs
