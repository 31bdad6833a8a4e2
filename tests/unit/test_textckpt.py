"""Text-derived trial answers: the indexed lookup equals reading each prefix from scratch."""
from hypothesis import given, settings, strategies as st

from analysis.core.answers import normalize_number
from analysis.ingest.textckpt import _BOX_RE, _HASH_RE, _SIMPLE_NUM, _clean_number, trial_answers

PIECES = ["\\boxed{1}}", "12", "3", ",", "1,250", ".", "5", "/", "7", "-", "−4", " ", "\n", "\n\n", "So", "Wait", "x", "$",
          "\\boxed{", "}", "#### ", "0.75", "42."]


def reference(text: str, cut: int):
    """The last answer stated in text[:cut], read from the prefix alone."""
    prefix = text[:cut]
    boxes = []                       # closed boxes, each read by balancing its own braces within the prefix
    for m in _BOX_RE.finditer(prefix):
        depth, j = 1, m.end()
        while j < len(prefix) and depth:
            depth += {"{": 1, "}": -1}.get(prefix[j], 0)
            j += 1
        if depth == 0 and prefix[m.end():j - 1].strip():
            boxes.append((j, prefix[m.end():j - 1].strip()))
    if boxes:
        return max(boxes)[1]         # the box that closes last
    hashes = [m.group(1).strip() for m in _HASH_RE.finditer(text) if m.end() <= cut and m.group(1).strip()]
    if hashes:
        return hashes[-1]
    nums = _SIMPLE_NUM.findall(prefix)
    return _clean_number(nums[-1]) if nums else None


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=40), st.data())
def test_indexed_trial_answers_equal_reading_each_prefix(pieces, data):
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=12)))
    got = trial_answers(text, cuts, "number")
    for c, (raw, norm) in zip(cuts, got):
        want = reference(text, c)
        assert raw == want, (text, c)
        assert norm == (normalize_number(want) if want else "")


TEXT_PIECES = PIECES + ["Wait", " Wait", "Hmm,", "\n\n", "\n \n", "Actually", " the", "step", "####", " 18\n", "{", "}}"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TEXT_PIECES), max_size=60).map("".join), min_size=1, max_size=8),
       st.sampled_from([1, 3, 8, 32]))
def test_chunk_checkpoints_equal_the_per_trace_functions(texts, every):
    from analysis.core.schema import KIND_RANK
    from analysis.ingest.textckpt import number_checkpoints_batch, placements
    r = number_checkpoints_batch(texts, every)
    for i, tx in enumerate(texts):
        pl, n = placements(tx, every)
        ans = trial_answers(tx, [p[1] for p in pl], "number")
        m = r["trace"] == i
        got = list(zip(r["pos"][m].tolist(), r["rank"][m].tolist(), r["is_step"][m].tolist(),
                       r["is_transition"][m].tolist(), r["raw"][m].tolist(), r["char_pos"][m].tolist()))
        assert got == [(p[0], KIND_RANK[p[2]], p[3], p[4], a[0], p[1]) for p, a in zip(pl, ans)], (tx, every)
        assert r["n_tokens"][i] == n
