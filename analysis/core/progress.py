"""Progress bars (tqdm) that stay quiet when output is not a terminal or when asked to; ``$STOPLINE_PROGRESS``
keeps them on in a log (a dashboard job reads its run's bar there)."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress(iterable=None, *, desc: str = "", total: int | None = None, unit: str = "it", disable: bool = False,
             **kw):
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False,
                disable=disable or not (sys.stderr.isatty() or os.environ.get("STOPLINE_PROGRESS")), **kw)
