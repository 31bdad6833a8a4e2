"""Slices of a run's questions (by question length or a metadata field), for per-slice presets, optimisers
and reports."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from analysis.core.errors import StoplineError
from analysis.replay.engine import RunTable


def slice_labels(t: RunTable, by: str, n_bins: int = 3) -> np.ndarray:
    """Slice label per question. ``by``: 'length' (question length tertiles), or a metadata column
    ('meta.difficulty'); numeric metadata with many values is binned into quantiles."""
    if by == "length":
        x = t.meta["question_chars"].to_numpy(dtype=float)
        edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))
        names = ["short", "medium", "long"] if len(edges) == 2 else [f"bin{i}" for i in range(len(edges) + 1)]
        return np.array(names, dtype=object)[np.searchsorted(edges, x, side="right")]
    if by not in t.meta.columns:
        have = [c for c in t.meta.columns if c.startswith("meta.")]
        raise StoplineError(f"no question field {by!r} to slice by",
                            hint=f"choose 'length' or one of: {', '.join(have) or '(this run has none)'}")
    col = t.meta[by]
    if pd.api.types.is_numeric_dtype(col) and col.nunique() > 6:
        x = col.to_numpy(dtype=float)
        edges = np.unique(np.nanquantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))
        return np.array([f"{by.split('.')[-1]}≤{e:g}" for e in edges] + [f"{by.split('.')[-1]}>{edges[-1]:g}"],
                        dtype=object)[np.searchsorted(edges, x, side="left")]
    return value_labels(col)


NONE = "(none)"


def value_label(v) -> str:
    """A question field's value as a slice label, the same for a request's value live (``routing.route``) and
    for the run's column in replay: a whole number without ``.0`` (a column with a missing value is read as
    floats: 2 is "2" either way), no value "(none)"."""
    if v is None or isinstance(v, bool):
        return NONE if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))                 # exactly, however large (a float would round it, or overflow)
    if isinstance(v, (float, np.floating)):
        x = float(v)
        return NONE if x != x else str(int(x)) if x.is_integer() and abs(x) < 2 ** 53 else repr(x)
    if isinstance(v, str):
        try:
            return value_label(float(v)) if v.strip() and not v.strip().isalpha() else v
        except ValueError:
            return v
    return str(v)


def value_labels(col: pd.Series) -> np.ndarray:
    """``value_label`` of every value of a column: numbers at once, other columns value by value."""
    if pd.api.types.is_integer_dtype(col) and not col.isna().any():
        return col.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        x = col.to_numpy(dtype=float)
        whole = np.isfinite(x) & (x == np.round(x)) & (np.abs(x) < 2 ** 53)
        out = x.astype(str).astype(object)          # numpy writes a float as repr does (shortest round trip)
        out[whole] = x[whole].astype(np.int64).astype(str)
        out[np.isnan(x)] = NONE
        return out
    return np.array([value_label(v) for v in col.to_numpy(dtype=object)], dtype=object)


_SIZES = {"short": 0, "medium": 1, "long": 2}


def slice_order(labels) -> list:
    """The distinct slice labels in their natural order: short, medium, long; numbered bins and quantile bins
    (``difficulty≤3``, ``difficulty>3``) by their bound; numbers by value; any other label alphabetically; no
    value ("(none)", "nan") last."""
    def key(lab):
        s = str(lab)
        if s in _SIZES:
            return (0, _SIZES[s], 0, "")
        if s == NONE:                      # no value: last
            return (6, 0, 0, "")
        if m := re.fullmatch(r"bin(\d+)", s):
            return (1, int(m.group(1)), 0, "")
        if m := re.fullmatch(r".*?(≤|>)(-?(?:inf|\d+(?:\.\d+)?(?:e[+-]?\d+)?))", s):
            return (2, float(m.group(2)), m.group(1) == ">", "")
        try:
            x = float(s)
        except ValueError:
            return (4, 0, 0, s)
        return (3, x, 0, "") if x == x else (5, 0, 0, s)       # NaN ("nan", no value): last
    return sorted(set(labels), key=key)
