"""Paired passes (``analysis.backend.fused``): the batch's decode step and the probes' answer step in one
forward pass give each group what a pass of its own gives; the runner's fused answers change nothing but time."""
import copy

import pytest
import torch

from analysis.backend.attention import use_fast_decode
from analysis.backend.fused import can_fuse, forward_pair
from analysis.backend.kvcache import new_cache, select_rows
from analysis.backend.decode import generate_batch
from analysis.backend.probe import probe_from_scratch
from analysis.backend.prompts import build_prompt, GenConfig
from analysis.backend.tiny import build_model


@pytest.fixture(scope="module")
def gqa():
    model, tok = build_model(seed=6, heads=4, kv_heads=2, initializer_range=0.3)
    assert not can_fuse(model)                 # sdpa: it knows nothing of split keys
    assert use_fast_decode(model) and can_fuse(model)
    return model, tok


def _step(model, ids, mask, cache):
    pos = mask.sum(-1, keepdim=True) - ids.shape[1] + torch.arange(ids.shape[1])[None]
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_paired_pass_gives_each_group_its_own_pass(gqa, padded):
    """Group a: a batch decoding (left-padded or not); group b: two of its rows, one repeated, with a cue
    appended and one column masked out, as a probe's answers are. Five steps paired against five apart:
    the same logits and the same caches."""
    model, tok = gqa
    texts = ["What is 2+2? Let me think.", "Apples and pears, and more apples?"]
    if not padded:
        texts = ["What is 2+2? Let me think.", "What is 3+3? Let me think."]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert bool((mask == 0).any()) == padded
    with torch.no_grad():
        cache = new_cache()
        _step(model, ids, mask, cache)
        rows = [1, 0, 1]
        sub, m = select_rows(cache, rows), mask[rows].clone()
        m[2, -3] = 0                           # an entry that sees an earlier prefix
        cue = torch.tensor([tok.convert_tokens_to_ids(c) for c in "so {"])[None].expand(3, -1)
        m = torch.cat([m, torch.ones(3, 4, dtype=m.dtype)], 1)
        _step(model, cue, m, sub)
        caches = {"apart": (copy.deepcopy(cache), copy.deepcopy(sub)), "paired": (cache, sub)}
        logits = {}
        for how, (ca, cb) in caches.items():
            ma, mb, out = mask, m, []
            for s in range(5):
                fa, fb = ids[:, s:s + 1], ids[rows, -1 - s:][:, :1]
                ma = torch.cat([ma, torch.ones_like(ma[:, :1])], 1)
                mb = torch.cat([mb, torch.ones_like(mb[:, :1])], 1)
                if how == "apart":
                    la, lb = _step(model, fa, ma, ca), _step(model, fb, mb, cb)
                else:
                    pa, pb = ma.sum(-1, keepdim=True) - 1, mb.sum(-1, keepdim=True) - 1
                    la, lb = forward_pair(model, (fa, ma, pa, ca), (fb, mb, pb, cb))
                out.append(torch.cat([la[:, -1], lb[:, -1]]))
            logits[how] = torch.stack(out)
    assert torch.allclose(logits["apart"], logits["paired"], atol=1e-4)   # fp32: a matrix product rounds by its row count
    assert torch.equal(logits["apart"].argmax(-1), logits["paired"].argmax(-1))
    for x, y in zip(caches["apart"], caches["paired"]):
        assert x.get_seq_length() == y.get_seq_length()
        for lx, ly in zip(x.layers, y.layers):
            assert torch.allclose(lx.keys, ly.keys, atol=1e-4) and torch.allclose(lx.values, ly.values, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampled"])
def test_fused_answers_change_nothing_but_time(gqa, temperature):
    """Deferred probes whose answers ride along in the batch's decode steps: the same traces as without, and
    every probe the greedy one computed from scratch (answers still under way at the next interval, or at the
    end, finish on their own)."""
    model, tok = gqa
    cfg = GenConfig(every=6, max_new_tokens=40, temperature=temperature, seed=3).resolved("number", "instruct")
    prompts = [build_prompt(tok, q, cfg) for q in ["What is 2+2?", "A longer question about pears and apples?",
                                                   "x", "Wait, what is 12 * 12?"]]
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [1, tok.convert_tokens_to_ids("<|end|>")]   # rows end at different times
    try:
        stats, stats_apart = {}, {}
        fused = generate_batch(model, tok, prompts, cfg, stats=stats)
        apart = generate_batch(model, tok, prompts, cfg, fuse=False, stats=stats_apart)
        assert stats["fused_steps"] > 0 and stats["steps"] > 0      # some answers also finished on their own
        assert stats_apart["fused_steps"] == 0
        assert len({len(r.token_ids) for r in fused}) >= 2
        n = 0
        for prompt, a, b in zip(prompts, fused, apart):
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert [(c["pos"], c["kind"]) for c in a.checkpoints] == [(c["pos"], c["kind"]) for c in b.checkpoints]
            pids = tok(prompt, add_special_tokens=False)["input_ids"]
            for c in a.checkpoints:
                ref = probe_from_scratch(model, tok, pids + a.token_ids[: c["pos"]], cfg.cue)
                assert c["probe"].tokens == ref.tokens
                assert c["probe"].probs == pytest.approx(ref.probs, abs=1e-4)
                assert c["probe"].entropy == pytest.approx(ref.entropy, abs=1e-4)
                n += 1
    finally:
        model.generation_config.eos_token_id = eos
    assert n >= 12


def test_a_lone_row_keeps_its_decode_steps_to_itself(gqa):
    """A batch of one never shares its pass (a one-row matrix product rounds differently from a batch's on
    CPU in bf16): its answers finish in steps of their own, the same answers."""
    model, tok = gqa
    cfg = GenConfig(every=6, max_new_tokens=30).resolved("number", "instruct")
    prompt = [build_prompt(tok, "What is 2+2?", cfg)]
    stats = {}
    one = generate_batch(model, tok, prompt, cfg, stats=stats)[0]
    assert stats["fused_steps"] == 0 and stats["steps"] > 0
    ref = generate_batch(model, tok, prompt, cfg, fuse=False)[0]
    assert one.token_ids == ref.token_ids
    assert [c["probe"].tokens for c in one.checkpoints] == [c["probe"].tokens for c in ref.checkpoints]


def test_models_with_sliding_window_layers_do_not_fuse():
    model, _ = build_model("qwen2", seed=1, heads=4, kv_heads=2, use_sliding_window=True, sliding_window=8,
                           max_window_layers=1)
    use_fast_decode(model)
    assert "sliding_attention" in model.config.layer_types and not can_fuse(model)
