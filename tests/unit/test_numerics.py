"""What this processor's kernels promise (analysis/backend/numerics.py): measured, and what verify-controller may
expect from them."""
import pytest

from analysis.backend import numerics


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_padding_invariance_is_measured(dtype):
    """The check runs torch's attention with masked key columns added (left padding, a masked gap) and says which
    case differed; it holds or not by the machine's kernels (on AVX-512 and on ATen's AVX2 kernels it does not)."""
    res = numerics.padding_invariance(dtype)
    assert set(res) == {"invariant", "why"} and isinstance(res["invariant"], bool)
    assert dtype in res["why"]
    if not res["invariant"]:
        assert "columns" in res["why"] and "differs" in res["why"]


def test_exact_replay_of_a_batched_run_needs_attention_that_ignores_masked_columns(monkeypatch):
    """A batched run's probes attended over masked key columns the live controller's do not have: bit-for-bit live
    values are expected only where those columns change nothing, and the answer says why not."""
    yes = {"invariant": True, "why": "ok"}
    no_pad = {"invariant": False, "why": "bfloat16 attention of 1 query token(s) over 48 keys differs"}
    no_rows = {"invariant": False, "why": "a bfloat16 product of 2 of 6 rows differs"}
    monkeypatch.setattr(numerics, "batch_invariance", lambda dtype="bfloat16": yes)
    monkeypatch.setattr(numerics, "padding_invariance", lambda dtype="bfloat16": no_pad)
    assert numerics.exact_replay("bfloat16", "immediate")["expected"]
    ex = numerics.exact_replay("bfloat16", "batched")
    assert not ex["expected"] and "batched" in ex["why"] and no_pad["why"] in ex["why"]
    monkeypatch.setattr(numerics, "padding_invariance", lambda dtype="bfloat16": yes)
    assert numerics.exact_replay("bfloat16", "batched")["expected"]
    monkeypatch.setattr(numerics, "batch_invariance", lambda dtype="bfloat16": no_rows)
    for probes in ("immediate", "batched"):
        ex = numerics.exact_replay("bfloat16", probes)
        assert not ex["expected"] and no_rows["why"] in ex["why"]


def test_describe_names_both_properties():
    line = numerics.describe()
    assert "batch-invariant" in line and "padding-invariant" in line
