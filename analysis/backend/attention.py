"""Grouped-query decode attention on CPU without the slow kernel.

transformers' ``sdpa`` attention handles a one-token decode step of a grouped-query model (SmolLM2, Qwen2.5,
Llama 3: fewer key/value heads than query heads) two ways. With a padding mask it packs the query heads onto
their key/value heads and calls torch's attention on that; without one (every row of the batch unpadded: a
batch of one, equal-length prompts, a batch whose padded rows have left) it asks torch for ``enable_gqa``,
which on CPU is about 7x slower (2.7 ms against 0.4 ms a layer at batch 16, 300 cached tokens; a SmolLM2
decode step 139 ms against 67 ms). ``stopline_sdpa`` is transformers' own ``sdpa`` given an all-true mask in
that one case, so it always takes the packed form: the same function, the same numbers as a padded batch.

Several query tokens under a mask (a probe's cue and drafted answer tokens, a padded prefill) ``sdpa``
handles by repeating every key/value head for its query heads (``repeat_kv``: a copy of the cache, every
layer). ``stopline_sdpa`` instead stacks each key/value head's query heads along the query axis, with the mask
repeated to match, and reads the keys and values as they are: the same attention, a third faster on a cue
pass's attention (19 entries, 330 cached tokens). The kernel then blocks the longer query axis differently,
so bf16 results may differ from ``sdpa``'s in the last place; prefills matched bit for bit on SmolLM2.
On GPUs, and for every other shape, it is ``sdpa`` unchanged.

Keys and values that come as a ``Split`` (two groups of rows with caches of their own in one forward pass:
the batch's decode step and the probes' answer step, ``fused.py``) get each group's attention as it would be
in a pass of its own, under its own mask.
"""
from __future__ import annotations

NAME = "stopline_sdpa"


def _packed(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Several query tokens of a grouped-query model under a mask, with each key/value head's query heads
    stacked along the query axis, so that the keys and values are read as they are instead of being repeated
    for every query head (``repeat_kv``, what ``sdpa`` does here: a copy of the whole cache, every layer)."""
    import torch
    b, h, q, d = query.shape
    g = module.num_key_value_groups
    mask = attention_mask[:, :, None].expand(-1, -1, g, -1, -1).reshape(attention_mask.shape[0], 1, g * q, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, h // g, g * q, d), key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(b, h, q, d).transpose(1, 2).contiguous(), None


class Split:
    """The keys (or values) of two groups of rows that share a forward pass but not a cache (``fused.py``):
    rows ``:n`` attend to ``a`` under ``mask_a``, the rest to ``b`` under ``mask_b``."""
    __slots__ = ("a", "b", "mask_a", "mask_b", "n")

    def __init__(self, a, b, mask_a, mask_b, n: int):
        self.a, self.b, self.mask_a, self.mask_b, self.n = a, b, mask_a, mask_b, n


def _forward(module, query, key, value, attention_mask, *args, **kwargs):
    import torch
    if isinstance(key, Split):
        # each group's attention exactly as in a pass of its own (the mask passed in is a placeholder)
        n = key.n
        out_a, _ = _forward(module, query[:n], key.a, value.a, key.mask_a, *args, **kwargs)
        out_b, _ = _forward(module, query[n:], key.b, value.b, key.mask_b, *args, **kwargs)
        return torch.cat([out_a, out_b]), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if (attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
            and 1 < query.shape[2] and query.device.type == "cpu" and getattr(module, "num_key_value_groups", 1) > 1
            and not args and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions")):
        return _packed(module, query, key, value, attention_mask, kwargs.get("dropout", 0.0), kwargs.get("scaling"))
    if (attention_mask is None and query.shape[2] == 1 and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) > 1 and kwargs.get("position_bias") is None):
        attention_mask = torch.ones(query.shape[0], 1, 1, key.shape[2], dtype=torch.bool, device=query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, _forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_fast_decode(model) -> bool:
    """Switch a CPU model that uses ``sdpa`` to ``stopline_sdpa``; True if it switched (or had already)."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl == NAME:
        return True
    if impl != "sdpa" or next(model.parameters()).device.type != "cpu":
        return False
    register()
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
