"""One forward pass for two groups of rows that keep caches of their own.

A decode step reads every weight of the model once whatever the batch: SmolLM2 on 2 CPU cores, a batch-16
step at 400 cached tokens takes ~72 ms, a one-row step ~40 ms. The probes' answers, decoded a token at a
time after their cue pass, are such small steps. ``forward_pair`` runs the batch's decode step and the
answers' step as one pass: the linear layers see both groups' rows stacked, attention stays per group, each
over its own cache under its own mask (``attention.Split``). Every row's numbers are those of a pass of its
own group alone, bit for bit in bf16 on SmolLM2 (a row's matrix products do not depend on the other rows of
a batch of two or more), at ~80 ms for the pair against ~72 + ~45 ms apart (4 answer rows).

It needs ``stopline_sdpa`` attention (``attention.use_fast_decode``), which knows a ``Split``, and full
attention in every layer (no sliding window: the per-group masks are the full-attention ones).
"""
from __future__ import annotations

from analysis.backend.attention import NAME, Split


def can_fuse(model) -> bool:
    cfg = model.config
    return (getattr(cfg, "_attn_implementation", None) == NAME
            and all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])))


class PairCache:
    """The cache of a paired pass: rows ``:n`` append to ``a``, the rest to ``b``; attention gets both, split."""
    is_compileable = False

    def __init__(self, a, b, mask_a, mask_b, n: int):
        self.a, self.b, self.mask_a, self.mask_b, self.n = a, b, mask_a, mask_b, n

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        n = self.n
        ka, va = self.a.update(key_states[:n], value_states[:n], layer_idx)
        kb, vb = self.b.update(key_states[n:], value_states[n:], layer_idx)
        return Split(ka, kb, self.mask_a, self.mask_b, n), Split(va, vb, self.mask_a, self.mask_b, n)


def _mask(model, mask2d, cache, pos):
    """The attention mask the model would build for this group in a pass of its own."""
    import torch
    from transformers.masking_utils import create_causal_mask
    stub = torch.empty(mask2d.shape[0], pos.shape[1], 1, dtype=model.dtype, device=mask2d.device)
    return create_causal_mask(config=model.config, inputs_embeds=stub, attention_mask=mask2d, cache=cache,
                              position_ids=pos)


def forward_pair(model, a: tuple, b: tuple):
    """``a`` and ``b``: (input ids [rows, q], 2-D attention mask, position ids, cache) of two groups whose
    passes feed the same number of tokens a row. Returns each group's logits, as its own pass would."""
    import torch
    ids_a, mask_a, pos_a, cache_a = a
    ids_b, mask_b, pos_b, cache_b = b
    pair = PairCache(cache_a, cache_b, _mask(model, mask_a, cache_a, pos_a), _mask(model, mask_b, cache_b, pos_b),
                     ids_a.shape[0])
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=ids_a.device)   # 4-D: the model builds no mask
    out = model(input_ids=torch.cat([ids_a, ids_b]), attention_mask=placeholder,
                position_ids=torch.cat([pos_a, pos_b]), past_key_values=pair, use_cache=True)
    n = ids_a.shape[0]
    return out.logits[:n], out.logits[n:]
