"""The in-place KV cache (``analysis.backend.kvcache``): the same keys and values as transformers' cache after
appends, crops, row selections and copies; appends within its spare room copy nothing."""
import copy

import pytest
import torch
from transformers import DynamicCache

from analysis.backend.kvcache import new_cache, select_rows


def _kv(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)


def _same(a, b):
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a.layers, b.layers))


def _ops(cache):
    """Appends of 5, 1, 1 and 70 columns (past the spare room), a crop, appends after it, a row selection."""
    for li in range(2):
        cache.update(*_kv(3, 5, li), li)
    for s, n in enumerate([1, 1, 70]):
        for li in range(2):
            cache.update(*_kv(3, n, 10 + 3 * s + li), li)
    yield cache
    cache.crop(-4)
    yield cache
    for li in range(2):
        cache.update(*_kv(3, 2, 30 + li), li)
    yield cache
    cache.batch_select_indices(torch.tensor([2, 0]))
    for li in range(2):
        cache.update(*_kv(2, 3, 40 + li), li)
    yield cache


def test_growing_cache_holds_what_dynamic_cache_holds():
    for ours, ref in zip(_ops(new_cache()), _ops(DynamicCache())):
        assert ours.get_seq_length() == ref.get_seq_length()
        assert _same(ours, ref)


def test_appends_within_the_spare_room_write_in_place():
    cache = new_cache()
    cache.update(*_kv(2, 10, 0), 0)
    ptr = cache.layers[0].keys.data_ptr()
    for s in range(20):
        cache.update(*_kv(2, 1, s + 1), 0)
        assert cache.layers[0].keys.data_ptr() == ptr      # no new tensor: written into the buffer
    assert cache.get_seq_length() == 30


def test_cropped_view_is_overwritten_by_the_next_append_only_where_cropped():
    cache = new_cache()
    k, v = _kv(1, 6, 0)
    cache.update(k, v, 0)
    cache.crop(-2)                                    # a probe's cue, taken back
    k2, v2 = _kv(1, 1, 1)
    cache.update(k2, v2, 0)
    assert torch.equal(cache.layers[0].keys, torch.cat([k[:, :, :4], k2], 2))


def test_deepcopy_and_select_rows_are_independent_copies():
    cache = new_cache()
    cache.update(*_kv(3, 6, 0), 0)
    before = cache.layers[0].keys.clone()
    dup = copy.deepcopy(cache)
    sub = select_rows(cache, [2, 0, 2])             # a row may come twice
    assert torch.equal(sub.layers[0].keys, before[[2, 0, 2]])
    for c in (dup, sub):
        c.update(*_kv(c.layers[0].keys.shape[0], 3, 1), 0)
        c.layers[0].keys.zero_()
    assert torch.equal(cache.layers[0].keys, before)
    cache.update(*_kv(3, 1, 2), 0)
    assert sub.get_seq_length() == dup.get_seq_length() == 9 and cache.get_seq_length() == 7


@pytest.mark.parametrize("rows", [[0], [1, 0, 1]])
def test_model_runs_the_same_on_either_cache(rows):
    """A tiny model decodes the same logits with either cache, from a selection of rows too."""
    from analysis.backend.tiny import build_model
    model, tok = build_model(seed=5, heads=4, kv_heads=2)
    enc = tok(["What is 2+2?", "Apples and pears?"], return_tensors="pt", padding=True, add_special_tokens=False)
    outs = []
    for make in (new_cache, DynamicCache):
        ids, mask = enc["input_ids"], enc["attention_mask"]
        cache, lg = make(), []
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  past_key_values=cache, use_cache=True)
            sub, m = select_rows(cache, rows), mask[rows]
            for s in range(4):
                m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
                lg.append(model(input_ids=ids[rows, s:s + 1], attention_mask=m, past_key_values=sub,
                                position_ids=m.sum(-1, keepdim=True) - 1, use_cache=True).logits[:, -1])
        outs.append(torch.stack(lg))
    assert torch.equal(outs[0], outs[1])
