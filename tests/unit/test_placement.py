"""The streamed placement rule (engines that receive tokens one at a time) places the same checkpoints as the
in-process decode loop, and the top-k entropy is a lower bound of the exact one."""
import math

import numpy as np
import pytest

from analysis.backend.decode import generate_batch
from analysis.backend.engine_openai import entropy_from_top
from analysis.core.answers import answer_ended, probe_answer
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


def test_a_probes_answer_ends_at_the_brace_that_closes_the_box_or_the_line():
    assert probe_answer(" 42} and more") == "42"
    assert probe_answer("\\frac{14}{3}} and more") == "\\frac{14}{3}"          # braces inside the box balanced
    assert probe_answer("\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert probe_answer("\\frac{1") == "\\frac{1"                                  # cut short: what it wrote
    assert probe_answer("7\nrest") == "7"
    assert answer_ended("\\frac{14}{3}}") and answer_ended("x\n")
    assert not answer_ended("\\frac{14}") and not answer_ended("18 \\text{ kg}")


SMOLLM2 = "smollm2-135m-instruct"


def test_text_placement_agrees_with_the_token_rule_on_real_traces():
    """The text importer's rule (ingest/textckpt, on text and a tokenizer's offsets) against the engines' token
    rule (backend/placement, on the same tokenizer's ids), over the demo store's SmolLM2 traces: intervals and
    steps (the final checkpoint's step flag included) agree exactly. Transitions: every one the text rule finds
    the token rule finds too; the token rule also fires on a token that is only the start of a transition phrase
    ("Let" of "Let's", which may yet be "Let me check"): it must decide on one token as the tokens stream in.
    Those are the only differences, and they are measured here (docs/architecture.md, "Placement")."""
    duckdb = pytest.importorskip("duckdb")
    from analysis.backend.models import CACHE, load_tokenizer
    from analysis.backend.placement import is_transition_start
    from analysis.core.schema import TRANSITION_WORDS
    from analysis.ingest.derive import tokenizer_starts
    from analysis.ingest.textckpt import placements as text_placements
    if not (CACHE / SMOLLM2 / "bf16" / "config.json").exists():
        pytest.skip("the packaged SmolLM2 is not fetched (python -m analysis models --fetch smollm2-135m-instruct)")
    tok, _, _ = load_tokenizer(SMOLLM2)
    from analysis.core.store import DEMO_DB
    con = duckdb.connect(str(DEMO_DB), read_only=True)
    texts = [r[0] for r in con.execute(
        "select t.text from traces t join runs r using (run_id) where r.model = ? and r.source = 'generated' "
        "order by t.run_id, t.question_id", [SMOLLM2]).fetchall()]
    texts.append("We add them.\n\nWait, that is wrong. Hmm, 3 + 4 = 7. Actually, let me redo it.\n\n"
                 "Alternatively, count. But wait, 7. Let me check: 7.\n\n")
    assert len(texts) > 200
    cache: dict = {}
    cfg = GenConfig(every=32, steps=True, transitions=True)
    diff_pieces, n_steps, n_text_transitions = set(), 0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        piece = lambda t: cache.setdefault(t, tok.decode([t]))       # noqa: E731
        by_tok = placements(ids, cfg, piece)
        by_text, n = text_placements(text, 32, tokenizer_starts([text], SMOLLM2, tok)[0])
        assert n == len(ids)
        for flag, i in (("is_step", 3), ("is_transition", 4)):
            a = {p for p, k in by_tok if k[flag]}
            b = {c[0] for c in by_text if c[i]}
            if flag == "is_step":
                assert a == b, text[:200]
                n_steps += len(a)
            else:
                assert b <= a, text[:200]
                n_text_transitions += len(b)
                diff_pieces |= {piece(ids[p]).strip() for p in a - b}
        assert [p for p, k in by_tok if k["kind"] == "interval"] == \
            [p for p, *_ in by_text if p % 32 == 0 and p < n and p not in {q for q, k in by_tok if k["kind"] != "interval"}]
    assert n_steps > 100 and n_text_transitions >= 5
    # what only the token rule calls a transition: a token that starts a transition phrase without ending it
    assert diff_pieces and all(is_transition_start(p) and p not in TRANSITION_WORDS for p in diff_pieces), diff_pieces
