"""The probe: at a checkpoint, append the cue and greedily decode a short trial answer, recording its token
probabilities and the next-token entropy right after the cue.

Probes reuse the prefix's KV cache: only the cue and answer tokens are computed. When every active row
probes at once the probe runs on the batch cache itself, which is then cropped back; otherwise the probing
rows' cache entries are selected into a small cache of their own. By default (``probes='batched'``) probes
that fire for a row or two (blank lines, transition words, trace ends) wait for the next interval
checkpoint and run in its batch, each entry masked to its own prefix; after that batch's cue pass its answers
are decoded a token a step inside the batch's own next decode steps, one forward pass for both (``fused.py``:
the weights are read once), where the model's attention allows it. The live controller, which needs each
answer at once, probes immediately. Answers that have ended leave the probe batch once they are a
quarter of it. The naive alternatives exist for the benchmark and the equivalence test:
``probe_mode='reencode'`` recomputes the probing rows' whole prefixes (batched over the rows that probe at
once), ``'reencode_each'`` does it one sequence at a time, unpadded, as DEER's Hugging Face code probes (it
runs one question at a time), and ``'deepcopy'`` deep-copies the cache.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np

from analysis.core.answers import answer_ended, probe_answer

# transformers 5.x renames the cache argument; the old name still works until 5.40 (pinned: 5.24)
warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated", category=FutureWarning)


@dataclass
class Probe:
    raw: str
    tokens: list[int]
    probs: list[float]
    entropy: float
    probe_tokens: int

    def signals(self) -> dict:
        p = np.array(self.probs, dtype=np.float64)
        if len(p) == 0:
            return {"p_mean": math.nan, "p_geo": math.nan, "p_min": math.nan, "p_first": math.nan,
                    "entropy": self.entropy}
        return {"p_mean": float(p.mean()), "p_geo": float(np.exp(np.log(np.maximum(p, 1e-12)).mean())),
                "p_min": float(p.min()), "p_first": float(p[0]), "entropy": self.entropy}



def may_close(piece: str) -> bool:
    """Whether a token's text may end a trial answer (a brace, a newline)."""
    return "}" in piece or "\n" in piece


def answer_signal_probs(tok, toks: list[int], probs: list[float], raw: str, piece=None) -> list[float]:
    """The probabilities an answer's signals are read from: every token's, but the closing one's (a brace, a
    newline) only where it carries answer text (the answer without it reads otherwise)."""
    last = (piece or (lambda t: tok.decode([t])))(toks[-1]) if toks else ""     # ``piece``: a cached decoder
    if toks and may_close(last) and raw == probe_answer(tok.decode(toks[:-1])):
        return probs[:-1]
    return probs


def eos_ids(model, tok) -> set[int]:
    """The tokenizer's end-of-sequence id plus any the model's generation config names."""
    ids = {tok.eos_token_id}
    gen = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(gen if isinstance(gen, list) else [gen] if gen is not None else [])
    return {i for i in ids if i is not None}


_STOP_IDS: dict[tuple, set[int]] = {}
MAX_DRAFT = 3       # draft tokens fed after the cue: every entry's first pass grows by the longest draft
STEP_TOKENS = 16    # an answer step feeds up to this many tokens in all (the live entries' next tokens and their
                    # guesses): SmolLM2 on 2 CPU cores, one entry, 16 tokens a pass cost 65 ms against 41 for one


class Prober:
    """Runs the cue + greedy answer for some rows of a batch, reusing (or not) the prefix cache."""

    def __init__(self, model, tok, cue: str, max_answer_tokens: int = 20, mode: str = "reuse",
                 max_draft: int = MAX_DRAFT):
        import torch
        self.model, self.tok, self.mode = model, tok, mode
        self.device = next(model.parameters()).device
        self.cue_ids = torch.tensor(tok(cue, add_special_tokens=False)["input_ids"], device=self.device)
        self.max_answer = max_answer_tokens
        self.max_draft = max_draft
        self.eos = eos_ids(model, tok)
        self.stop_ids = self._stop_ids()
        self.stats = {"events": 0, "probes": 0, "masked": 0, "repeated": 0, "compactions": 0,   # for tests and
                      "drafted": 0, "accepted": 0, "steps": 0, "fused_steps": 0,                # benchmarks
                      "step_drafted": 0, "step_accepted": 0}
        if mode == "reencode_each":
            self._reencode = Prober(model, tok, cue, max_answer_tokens, "reencode", 0)

    def _stop_ids(self) -> set[int]:
        """Token ids whose text holds a closing brace or a newline: the answer may end there (``ends``; computed
        once per tokenizer: decoding a 150k vocabulary takes half a second)."""
        key = (getattr(self.tok, "name_or_path", ""), len(self.tok), id(self.tok))
        if key not in _STOP_IDS:
            _STOP_IDS[key] = {tid for tid in range(len(self.tok))
                              if may_close(self.tok.decode([tid]))}
        return _STOP_IDS[key]

    def ends(self, toks: list[int]) -> bool:
        """Whether an answer that reads ``toks`` has ended: its last token may close it (a brace, a newline) and
        it does (the cue's box closed, the braces inside it balanced, or the line ended)."""
        return toks[-1] in self.stop_ids and answer_ended(self.tok.decode(toks))

    def _keep(self, guess: list[int], greedy: list[int], logp, toks: list[int], probs: list[float]):
        """Append the guessed tokens to a live answer while each is the greedy choice at its position
        (``greedy``, ``logp``: the pass's argmax and log-probabilities there). Returns how many were kept
        and whether the answer goes on."""
        a = 0
        while a < len(guess) and greedy[a] == guess[a]:
            toks.append(guess[a])
            probs.append(float(logp[a, guess[a]].exp()))
            a += 1
            if self.ends(toks) or len(toks) >= self.max_answer:
                return a, False
        return a, True

    def _take(self, guesses, at, logp_all, m, toks, probs, live):
        """After a pass that fed guessed tokens in its last columns (entry ``at[j]``'s guess in row ``j``,
        ``logp_all`` the log-probabilities at the position before each guess and after the last): keep each
        guess while greedy, mask the rejected guess columns out of ``m`` (in place), and return the
        log-probabilities of each entry's next token and how many guessed tokens each kept."""
        import torch
        G = logp_all.shape[1] - 1
        greedy = logp_all.argmax(-1).tolist()
        acc = [0] * len(at)
        for j, i in enumerate(at):
            if guesses[j]:
                acc[j], live[i] = self._keep(guesses[j], greedy[j], logp_all[j], toks[i], probs[i])
        A = torch.tensor(acc, device=self.device)
        m[:, m.shape[1] - G:] *= (torch.arange(G, device=self.device)[None, :] < A[:, None]).to(m.dtype)
        return logp_all[torch.arange(len(at), device=self.device), A], A

    @staticmethod
    def _rest(draft: list[int], context: list[int], toks: list[int], n: int) -> list[int]:
        """Up to ``n`` tokens that may come next in an answer that reads ``toks`` so far: the rest of the
        draft while the answer follows it, else what followed the answer's last tokens (up to three) where
        they last occur in the context (prompt lookup: an answer usually repeats a number or a sum from
        the trace)."""
        if not n:
            return []
        if draft[: len(toks)] == toks and len(draft) > len(toks):
            return draft[len(toks): len(toks) + n]
        for g in range(min(3, len(toks)), 0, -1):
            tail = toks[-g:]
            for j in range(len(context) - g - 1, -1, -1):
                if context[j: j + g] == tail:
                    return context[j + g: j + g + n]
        return []

    def run(self, cache, mask, rows: list[int], all_rows: bool, full_ids=None, cuts: list[int] | None = None,
            drafts: list[list[int] | None] | None = None, contexts: list[list[int]] | None = None) -> list[Probe]:
        """Probe ``rows`` of the batch (a row may appear more than once) and return their probes: ``start``,
        then answer steps of their own until every answer has ended (see ``start`` for the arguments)."""
        import torch
        if self.mode == "reencode_each":
            # one sequence at a time: its prefix without the batch's padding, then its answer on its own
            out = []
            for r in rows:
                ids = full_ids[r][mask[r].bool()][None, :]
                out += self._reencode.run(None, torch.ones_like(ids), [0], True, full_ids=ids)
            self.stats["events"] += 1
            self.stats["probes"] += len(rows)
            return out
        ans = self.start(cache, mask, rows, all_rows, full_ids, cuts, drafts, contexts)
        self.complete(ans)
        return ans.finish()

    def complete(self, ans: "Answers") -> None:
        """Answer steps of their own until every answer of ``ans`` has ended."""
        import torch
        with torch.no_grad():
            while not ans.done:
                inp, pos = ans.feed()
                out = self.model(input_ids=inp, attention_mask=ans.m, position_ids=pos, past_key_values=ans.sub,
                                 use_cache=True)
                ans.absorb(out.logits)

    def start(self, cache, mask, rows: list[int], all_rows: bool, full_ids=None, cuts: list[int] | None = None,
              drafts: list[list[int] | None] | None = None, contexts: list[list[int]] | None = None) -> "Answers":
        """The cue pass for ``rows`` of the batch (a row may appear more than once), with each entry's first
        answer token chosen: the answers then go on one step at a time (``Answers``), on their own (``run``)
        or in the batch's decode steps (``generate_batch``). ``cuts[i]``, when given, is the number of cache
        columns entry ``i`` sees: a probe deferred from an earlier position masks out what its row generated
        since (reuse mode only). ``all_rows``: the rows are the whole batch, once each, so the cue pass runs
        on the batch cache itself (cropped back when the answers end or move to a cache of their own).

        ``drafts[i]`` (reuse mode): a guess at entry ``i``'s answer tokens, usually the row's previous trial
        answer. It is fed after the cue in the same forward pass and kept for as long as it agrees with the
        model's own greedy choice, the next token coming from the same logits (speculative decoding with a
        free draft): the answer is the greedy one either way, in fewer forward passes when answers settle.
        The first pass takes ``max_draft`` tokens of it (every entry pays for the longest); later answer steps
        of their own, where few entries are left, feed each entry's next token with the rest of its draft or,
        once the answer has left the draft, what followed its last tokens in ``contexts[i]`` (the entry's
        prompt and trace: prompt lookup), up to ``STEP_TOKENS`` tokens a pass in all."""
        import torch

        from analysis.backend.kvcache import new_cache, select_rows   # lazy: kvcache loads transformers

        with torch.no_grad():
            R = torch.tensor(rows, device=self.device)
            n = len(rows)
            self.stats["events"] += 1
            self.stats["probes"] += n
            self.stats["repeated"] += n - len(set(rows))
            cue = self.cue_ids[None, :].expand(n, -1)
            k, D, full = cue.shape[1], 0, []
            if self.mode == "reencode":
                # Recompute everything: the rows' whole prefix (left-padded) plus the cue.
                ids = torch.cat([full_ids[R], cue], dim=1)
                m = torch.cat([mask[R], torch.ones(n, k, dtype=mask.dtype, device=self.device)], dim=1)
                pos = (m.cumsum(-1) - 1).clamp(min=0)
                sub = new_cache()
                out = self.model(input_ids=ids, attention_mask=m, position_ids=pos, past_key_values=sub, use_cache=True,
                                 logits_to_keep=1)
                crop_after = False
            else:
                if self.mode == "deepcopy":
                    sub = copy.deepcopy(cache)
                    if not all_rows:
                        sub.batch_select_indices(R)
                    crop_after = False
                elif all_rows:
                    sub, crop_after = cache, True
                else:
                    sub, crop_after = select_rows(cache, rows), False
                base = mask[R]
                if cuts is not None:
                    cols = torch.arange(base.shape[1], device=self.device)[None, :]
                    base = base * (cols < torch.tensor(cuts, device=self.device)[:, None]).to(base.dtype)
                    self.stats["masked"] += sum(c < mask.shape[1] for c in cuts)
                full = [list(d or [])[: self.max_answer] for d in drafts] if drafts is not None else []
                dr = [d[: self.max_draft] for d in full]
                D = max((len(d) for d in dr), default=0)
                inp, ones = cue, torch.ones(n, k, dtype=mask.dtype, device=self.device)
                if D:
                    dt = torch.tensor([d + [d[0] if d else 0] * (D - len(d)) for d in dr], device=self.device)
                    dm = torch.tensor([[1] * len(d) + [0] * (D - len(d)) for d in dr], dtype=mask.dtype, device=self.device)
                    inp, ones = torch.cat([cue, dt], 1), torch.cat([ones, dm], 1)
                m = torch.cat([base, ones], dim=1)
                pos = base.sum(-1, keepdim=True) + torch.arange(k + D, device=self.device)[None, :]
                out = self.model(input_ids=inp, attention_mask=m, position_ids=pos, past_key_values=sub, use_cache=True,
                                 logits_to_keep=D + 1)     # only the cue's last position and the draft's are read
            ans = Answers(self, n, k, k + D, cache, sub, crop_after, full, contexts)
            if D:
                # keep each draft while it agrees with the greedy choice; the first disagreement (or the token
                # after the draft) is the model's own next token, read from the same pass
                logp_all = torch.log_softmax(out.logits[:, -(D + 1):].float(), -1)
                ans.entropy = (-(logp_all[:, 0].exp() * logp_all[:, 0]).sum(-1)).tolist()
                logp, A = self._take(dr, list(range(n)), logp_all, m, ans.toks, ans.probs, ans.live)
                self.stats["drafted"] += sum(map(len, dr))
                self.stats["accepted"] += int(A.sum())
                ans.next_pos = base.sum(-1, keepdim=True) + k + A[:, None]
            else:
                logp = torch.log_softmax(out.logits[:, -1].float(), -1)
                ans.entropy = (-(logp.exp() * logp).sum(-1)).tolist()
                ans.next_pos = m.sum(-1, keepdim=True)
            ans.m = m
            ans.choose(logp)
            return ans


class Answers:
    """The answers of one probe batch after its cue pass, decoded greedily one step at a time: ``feed`` gives
    the next step's input ids and positions (its mask is ``m``, its cache ``sub``), ``absorb`` takes that
    step's logits, ``finish`` (once ``done``) gives the probes. Answers that have ended leave the batch once
    they are a quarter of it, so one long answer does not keep every row's forward passes going (on the probe
    benchmark 41 answer steps against 44 when they waited to be half: narrow batches get their guesses
    sooner; same answers)."""

    def __init__(self, prober: Prober, n: int, k: int, k_in: int, cache, sub, crop_after: bool, full, contexts):
        self.p, self.n, self.k, self.k_in = prober, n, k, k_in   # k: cue tokens; k_in: columns the cue pass appended
        self.cache, self.sub, self.crop_after = cache, sub, crop_after
        self.full, self.contexts = full, contexts
        self.toks: list[list[int]] = [[] for _ in range(n)]
        self.probs: list[list[float]] = [[] for _ in range(n)]
        self.live = [True] * n
        self.at = list(range(n))         # the entries still in the batch, in batch order
        self.fed = self.rounds = 0
        self.done = False
        self.entropy = self.m = self.next_pos = self.best = None
        self._ext: list[list[int]] = []

    def choose(self, logp) -> None:
        """Each live entry's greedy next token from ``logp``; ended answers leave once they are a quarter."""
        p = self.p
        probs = logp.exp()
        best = probs.argmax(-1)
        bp = probs.gather(-1, best[:, None])[:, 0]
        best_l, bp_l = best.tolist(), bp.tolist()
        for j, i in enumerate(self.at):
            if not self.live[i]:
                continue
            tid = best_l[j]
            if tid in p.eos:
                self.live[i] = False
                continue
            self.toks[i].append(tid)
            self.probs[i].append(bp_l[j])
            if p.ends(self.toks[i]) or len(self.toks[i]) >= p.max_answer:
                self.live[i] = False
        self.rounds += 1
        keep = [j for j, i in enumerate(self.at) if self.live[i]]
        if not keep or self.rounds >= p.max_answer:
            self.done = True
            return
        self.best = best
        if p.mode == "reuse" and 4 * len(keep) <= 3 * len(self.at):
            # a quarter of the answers have ended: continue with the live ones only
            p.stats["compactions"] += 1
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Continue with entries ``keep`` (positions in ``at``) only."""
        import torch

        from analysis.backend.kvcache import select_rows   # lazy: kvcache loads transformers

        K = torch.tensor(keep, device=self.p.device)
        if self.crop_after:           # leave the shared cache as it was, continue on a copy
            self.sub = select_rows(self.sub, keep)
            self.cache.crop(-(self.k_in + self.fed))
            self.crop_after = False
        else:
            self.sub.batch_select_indices(K)
        self.at = [self.at[j] for j in keep]
        self.m, self.next_pos, self.best = self.m[K], self.next_pos[K], self.best[K]

    def separate(self) -> None:
        """Move the answers to a cache of their own if they run on the batch cache (before the batch goes on:
        ``generate_batch`` decodes them in its own steps)."""
        if self.crop_after and not self.done:
            self._select([j for j, i in enumerate(self.at) if self.live[i]])

    def feed(self, lookahead: bool = True):
        """The next answer step's input ids and positions (its mask columns are appended to ``m``). With
        ``lookahead`` each entry's next token comes with guesses at the ones after it (the rest of its draft,
        else prompt lookup in its context), up to ``STEP_TOKENS`` tokens in all; without, one token each."""
        import torch
        p, at = self.p, self.at
        E = max(0, STEP_TOKENS // len(at) - 1) if lookahead else 0
        ext = [p._rest(self.full[i], self.contexts[i] if self.contexts else [], self.toks[i], E)
               if self.full and self.live[i] else [] for i in at] if E else []
        E = max((len(e) for e in ext), default=0)
        if E:
            inp = torch.tensor([[b] + e + [b] * (E - len(e)) for b, e in zip(self.best.tolist(), ext)],
                               device=p.device)
            em = torch.tensor([[1] * (1 + len(e)) + [0] * (E - len(e)) for e in ext], dtype=self.m.dtype,
                              device=p.device)
        else:
            inp, em = self.best[:, None], torch.ones(len(at), 1, dtype=self.m.dtype, device=p.device)
        self.m = torch.cat([self.m, em], dim=1)
        self._ext = ext if E else []
        return inp, self.next_pos + torch.arange(1 + E, device=p.device)[None, :]

    def absorb(self, logits, fused: bool = False) -> None:
        """Take the logits of the step ``feed`` gave (rows in ``at`` order, one position per token fed);
        ``fused``: that step was part of the batch's decode step (counted apart)."""
        import torch
        p = self.p
        E = logits.shape[1] - 1
        self.fed += 1 + E
        p.stats["fused_steps" if fused else "steps"] += 1
        logp_all = torch.log_softmax(logits.float(), -1)
        if E:
            logp, A = p._take(self._ext, self.at, logp_all, self.m, self.toks, self.probs, self.live)
            p.stats["step_drafted"] += sum(map(len, self._ext))
            p.stats["step_accepted"] += int(A.sum())
            self.next_pos = self.next_pos + 1 + A[:, None]
        else:
            logp = logp_all[:, -1]
            self.next_pos = self.next_pos + 1
        self.choose(logp)

    def finish(self) -> list[Probe]:
        """The probes, in entry order (leaves a shared batch cache as it was)."""
        if self.crop_after:
            self.cache.crop(-(self.k_in + self.fed))
            self.crop_after = False
        tok = self.p.tok
        res = []
        for i in range(self.n):
            t, pr = self.toks[i], self.probs[i]
            raw = probe_answer(tok.decode(t))
            res.append(Probe(raw, t, answer_signal_probs(tok, t, pr, raw), float(self.entropy[i]),
                             self.k + len(t)))
        return res


def probe_from_scratch(model, tok, prefix_ids: list[int], cue: str, max_answer_tokens: int = 20) -> Probe:
    """Reference probe: one unpadded sequence, computed from nothing (for the equivalence test)."""
    import torch
    p = Prober(model, tok, cue, max_answer_tokens, mode="reencode")
    ids = torch.tensor([prefix_ids], device=p.device)
    mask = torch.ones_like(ids)
    return p.run(None, mask, [0], True, full_ids=ids)[0]

