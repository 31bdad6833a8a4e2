"""The streamed placement rule (engines that receive tokens one at a time) places the same checkpoints as the
in-process decode loop, and the top-k entropy is a lower bound of the exact one."""
import math

import numpy as np
import pytest

from analysis.backend.decode import generate_batch
from analysis.backend.engine_openai import answer_raw, entropy_from_top
from analysis.backend.placement import placements
from analysis.backend.prompts import GenConfig, build_prompt
from analysis.backend.tiny import build_model


@pytest.mark.parametrize("seed,every", [(0, 8), (1, 5), (3, 16)])
def test_stream_placement_equals_decode_loop(seed, every):
    model, tok = build_model(seed=seed)
    cfg = GenConfig(every=every, max_new_tokens=96, temperature=1.0, seed=seed).resolved("number", "instruct")
    prompts = [build_prompt(tok, q, cfg) for q in ("What is 2+2?", "Wait, what is 7*8?", "Hmm 1 2 3", "x")]
    results = generate_batch(model, tok, prompts, cfg)
    kinds_seen = set()
    for r in results:
        want = sorted((c["pos"], c["kind"], c["is_step"], c["is_transition"]) for c in r.checkpoints)
        got = [(p, k["kind"], k["is_step"], k["is_transition"])
               for p, k in placements(r.token_ids, cfg, lambda t: tok.decode([t]))]
        assert got == want
        kinds_seen |= {k for _, k, _, _ in got}
    assert {"interval", "final"} <= kinds_seen


def test_entropy_from_top_k_is_exact_on_the_whole_distribution_and_a_lower_bound_otherwise():
    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = rng.normal(0, rng.uniform(0.5, 6), 500)
        lp = logits - np.log(np.exp(logits).sum())
        exact = float(-(np.exp(lp) * lp).sum())
        assert entropy_from_top(list(lp)) == pytest.approx(exact, rel=1e-9)
        top = sorted(lp, reverse=True)[:20]
        est = entropy_from_top({str(i): float(x) for i, x in enumerate(top)})
        assert est <= exact + 1e-9
        # the listed tokens alone give less still: the unlisted mass is counted, not dropped
        p = np.exp(top)
        assert est >= float(-(p * np.log(p)).sum()) - 1e-12
    assert math.isnan(entropy_from_top([]))


def test_answer_raw_cuts_at_the_brace_or_the_line():
    assert answer_raw(" 42} and more") == "42"
    assert answer_raw("\\frac{1") == "\\frac{1"
    assert answer_raw("7\nrest") == "7"
