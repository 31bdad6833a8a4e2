"""Progress bars (tqdm) that stay quiet when output is not a terminal or when asked to."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, desc: str = "", total: int | None = None, unit: str = "it", disable: bool = False,
             **kw):
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False,
                disable=disable or not sys.stderr.isatty(), **kw)
