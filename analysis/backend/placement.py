"""Where a generated trace gets its checkpoints, token by token: the rule of ``decode.generate_batch``, for one
trace whose tokens arrive one at a time (a server's stream; ``engine_openai``).

- every ``cfg.every`` generated tokens (``interval``);
- after a blank line (``step``: the text ends in exactly two newlines);
- just before a token that starts a transition word ("Wait", "Hmm", ...) after a space, newline, full stop or
  comma (``transition``; a step at the same place stays marked as a step);
- at the trace's end (``final``, whatever else the place is; a step there stays marked).

A place is known only once the next token is seen (a transition is decided by the token that follows it), so
``feed`` returns the checkpoints settled by each token, and ``end`` the rest.
"""
from __future__ import annotations

from analysis.backend.prompts import GenConfig
from analysis.core.schema import TRANSITION_WORDS


def is_transition_start(text: str) -> bool:
    """Whether a token's text starts (or is the start of) a transition word."""
    s = text.lstrip()
    return bool(s) and any(w.startswith(s) or s.startswith(w) for w in TRANSITION_WORDS) and s[0].isupper()


def token_pieces(tok):
    """``piece(token_id)``: the token's text as ``tok`` decodes it alone, each decoded once."""
    cache: dict[int, str] = {}

    def piece(tid: int) -> str:
        if tid not in cache:
            cache[tid] = tok.decode([tid])
        return cache[tid]
    return piece


class Placer:
    """Checkpoints of one trace as its tokens arrive. ``piece(token_id)`` is the token's text."""

    def __init__(self, cfg: GenConfig, piece):
        self.cfg, self.piece = cfg, piece
        self.n = 0                      # tokens so far
        self.tail = ""                  # the text's last 16 characters
        self.want: dict | None = None   # the checkpoint waiting at position n

    def feed(self, tid: int) -> list[tuple[int, dict]]:
        """Take the next generated token; returns the checkpoints it settles, as (position, kinds)."""
        out = []
        if self.cfg.transitions and self.n > 0 and is_transition_start(self.piece(tid)) \
                and self.tail.endswith((" ", "\n", ".", ",")):
            w = self.want or {"kind": "transition", "is_step": False, "is_transition": True}
            self.want = {**w, "kind": "transition", "is_transition": True}
        if self.want:
            out.append((self.n, self.want))
            self.want = None
        self.n += 1
        self.tail = (self.tail + self.piece(tid))[-16:]
        if self.cfg.every and self.n % self.cfg.every == 0:
            self.want = {"kind": "interval", "is_step": False, "is_transition": False}
        if self.cfg.steps and self.tail.endswith("\n\n") and not self.tail.endswith("\n\n\n"):
            self.want = {"kind": "step", "is_step": True, "is_transition": False}
        return out

    def end(self) -> list[tuple[int, dict]]:
        """The trace has ended (end of sequence or the token cap): its final checkpoint."""
        is_step = bool(self.want and self.want["is_step"])
        self.want = None
        return [(self.n, {"kind": "final", "is_step": is_step, "is_transition": False})]


def placements(token_ids: list[int], cfg: GenConfig, piece) -> list[tuple[int, dict]]:
    """Every checkpoint of a finished trace."""
    p = Placer(cfg, piece)
    out = [c for t in token_ids for c in p.feed(t)]
    return out + p.end()
