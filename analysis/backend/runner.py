"""Generation with checkpoint probes, written to the store batch by batch.

Decoding runs in lockstep over a left-padded batch with one KV cache. Checkpoints: every N generated
tokens, after a step boundary (a blank line), just before a transition word ("Wait", "Hmm", ...), and at
the trace's end. At a checkpoint the probe appends the cue (e.g. ``So the final answer is \\boxed{``) and
greedily decodes a short answer, recording the answer's token probabilities and the next-token entropy
right after the cue.

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
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ..answers import NUMBER, extract, normalize, normalize_gold, score
from ..errors import StoplineError
from ..textckpt import TRANSITION_WORDS

# transformers 5.x renames the cache argument; the old name still works until 5.40 (pinned: 5.24)
warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated", category=FutureWarning)

CUES = {
    "instruct": "\n\nSo the final answer is \\boxed{",
    "thinking": "\n</think>\n\n**Final Answer**\n\\boxed{",
}
PROMPTS = {
    NUMBER: "{question}\nSolve it step by step, then write the final answer inside \\boxed{{}}.",
    "text": "Answer the question. Think briefly, then write the final answer inside \\boxed{{}}.\n{question}",
    "math": "{question}\nSolve it step by step, then write the final answer in LaTeX inside \\boxed{{}}.",
    "choice": "{question}\nThink it through, then write the letter of your choice inside \\boxed{{}}.",
}


@dataclass
class GenConfig:
    every: int = 32
    steps: bool = True
    transitions: bool = True
    max_new_tokens: int = 512
    temperature: float = 0.0          # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    max_answer_tokens: int = 20
    prompt_template: str | None = None
    cue: str | None = None
    system: str | None = None

    def resolved(self, answer_type: str, kind: str) -> "GenConfig":
        c = copy.copy(self)
        c.prompt_template = c.prompt_template or PROMPTS[answer_type]
        c.cue = c.cue or CUES[kind]
        return c


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


@dataclass
class TraceResult:
    index: int
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    checkpoints: list[dict] = field(default_factory=list)   # pos, kind flags, probe
    gen_s: float = 0.0
    probe_s: float = 0.0


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
        """Token ids whose text holds a closing brace or a newline: the answer ends there (computed once
        per tokenizer: decoding a 150k vocabulary takes half a second)."""
        key = (getattr(self.tok, "name_or_path", ""), len(self.tok), id(self.tok))
        if key not in _STOP_IDS:
            _STOP_IDS[key] = {tid for tid in range(len(self.tok))
                              if "}" in (s := self.tok.decode([tid])) or "\n" in s}
        return _STOP_IDS[key]

    def _keep(self, guess: list[int], greedy: list[int], logp, toks: list[int], probs: list[float]):
        """Append the guessed tokens to a live answer while each is the greedy choice at its position
        (``greedy``, ``logp``: the pass's argmax and log-probabilities there). Returns how many were kept
        and whether the answer goes on."""
        a = 0
        while a < len(guess) and greedy[a] == guess[a]:
            toks.append(guess[a])
            probs.append(float(logp[a, guess[a]].exp()))
            a += 1
            if guess[a - 1] in self.stop_ids or len(toks) >= self.max_answer:
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

        from .kvcache import new_cache, select_rows
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
            if tid in p.stop_ids or len(self.toks[i]) >= p.max_answer:
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

        from .kvcache import select_rows
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
        tok, stop_ids = self.p.tok, self.p.stop_ids
        res = []
        for i in range(self.n):
            t, pr = self.toks[i], self.probs[i]
            text = tok.decode(t)
            raw = text.split("}")[0].split("\n")[0].strip()
            # the closing token counts toward the answer's signals only if it carries answer text
            if t and t[-1] in stop_ids and not tok.decode([t[-1]]).split("}")[0].split("\n")[0].strip():
                sig_probs = pr[:-1]
            else:
                sig_probs = pr
            res.append(Probe(raw, t, sig_probs, float(self.entropy[i]), self.k + len(t)))
        return res


def probe_from_scratch(model, tok, prefix_ids: list[int], cue: str, max_answer_tokens: int = 20) -> Probe:
    """Reference probe: one unpadded sequence, computed from nothing (for the equivalence test)."""
    import torch
    p = Prober(model, tok, cue, max_answer_tokens, mode="reencode")
    ids = torch.tensor([prefix_ids], device=p.device)
    mask = torch.ones_like(ids)
    return p.run(None, mask, [0], True, full_ids=ids)[0]


def _is_transition_start(text: str) -> bool:
    s = text.lstrip()
    return bool(s) and any(w.startswith(s) or s.startswith(w) for w in TRANSITION_WORDS) and s[0].isupper()


def generate_batch(model, tok, prompts: list[str], cfg: GenConfig, probe_mode: str = "reuse",
                   probe: bool = True, on_checkpoint=None, defer: bool | None = None,
                   stats: dict | None = None, drafts: bool = True, compact: bool = True,
                   fuse: bool = True) -> list[TraceResult]:
    """Generate full traces for a batch of prompts, probing at every checkpoint.

    ``on_checkpoint(rows, results)``, when given, is called after each round of probes with the rows that
    just got a checkpoint (the newest is ``results[r].checkpoints[-1]``); the rows it returns stop there
    (finish reason 'stopped'): that is how the live controller plugs in. A stopped row is treated like a
    row that met its end of sequence, so the others compute exactly what they would have without it.

    ``defer`` (default: on when probes reuse the cache and no ``on_checkpoint`` waits for the answers):
    probes at step boundaries, transition words and trace ends, which fire for a row or two at a time,
    wait for the next interval checkpoint (where every row probes) and run in that batch, each masked to
    its own prefix. Same answers, far fewer small forward passes. Deferred probes also get the row's previous
    trial answer as a draft (``drafts``; see ``Prober.run``). ``stats``, when given, collects the probe
    counters (events, probes, masked, repeated rows, compactions, drafted and accepted tokens, steps) and
    ``rows_dropped``, the times finished rows left the generation batch.

    ``compact`` (default on): rows that have ended (and whose deferred probes have run) leave the batch once
    they are a quarter of it, two rows staying at least: their cache rows are dropped, so a batch whose traces
    end at different lengths stops paying for the finished ones. A row's numbers do not depend on which other
    rows share its batch (bit for bit on SmolLM2 in bf16 on CPU, for two rows or more), and sampling draws
    for every original row in the same order as before, so traces and probes are the same with or without
    it; only the time changes.

    ``fuse`` (default on, with deferred probes on a model with ``stopline_sdpa`` attention, which
    ``models.load`` gives every CPU model that uses sdpa, and full attention in every layer: SmolLM2, Qwen2.5):
    after an interval's cue pass the answers are not decoded in steps of their own but in the batch's next
    decode steps, one token each a pass (``fused.forward_pair``: the weights are read once for both). Traces
    are the same bit for bit; the answers are the greedy ones as before (with bf16 weights a one-token answer
    step may round differently from a drafted one).
    """
    import torch

    from .fused import can_fuse, forward_pair
    from .kvcache import new_cache
    dev = next(model.parameters()).device
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    B = ids.shape[0]
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
    prober = Prober(model, tok, cfg.cue, cfg.max_answer_tokens, probe_mode, MAX_DRAFT if drafts else 0) \
        if probe else None
    eos = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    results = [TraceResult(i) for i in range(B)]
    done = [False] * B
    want: dict[int, dict] = {}            # rows to probe at the current prefix -> kind flags
    text_tail = [""] * B
    gcpu = torch.Generator().manual_seed(cfg.seed)
    full_ids = ids                        # only grown for the re-encoding probe modes
    t_gen = t_probe = 0.0
    piece_cache: dict[int, str] = {}
    defer = defer is not False and probe and probe_mode == "reuse" and on_checkpoint is None
    # deferred probes' answers ride along in the batch's decode steps; not a batch of one: a one-row matrix
    # product takes another kernel than a batch's (rounds differently in bf16), and sharing its pass could
    # change a lone row's trace (compaction keeps two rows at least, so a larger batch never gets there)
    fuse = fuse and defer and B >= 2 and can_fuse(model)
    answering = None                      # (Answers, their pending entries) under way
    pending: list[tuple[int, int, int, dict]] = []     # deferred probes: row, pos, cache columns, kinds
    last_answer: dict[int, list[int]] = {}             # row -> its latest trial answer: the next probe's draft
    rows_in = list(range(B))              # cache row i holds result rows_in[i] (rows leave when compacted)
    n_dropped = 0                         # times finished rows left the batch

    def cache_rows(rows: list[int]) -> list[int]:
        at = {r: i for i, r in enumerate(rows_in)}
        return [at[r] for r in rows]

    def piece(tid: int) -> str:
        if tid not in piece_cache:
            piece_cache[tid] = tok.decode([tid])
        return piece_cache[tid]

    def do_probe(rows: list[int], kinds: dict[int, dict]):
        nonlocal t_probe
        if not rows or prober is None:
            for r in rows:
                results[r].checkpoints.append({"pos": len(results[r].token_ids), **kinds[r], "probe": None})
            return
        t0 = time.perf_counter()
        all_rows = len(rows) == len(rows_in)
        outs = prober.run(cache, mask, cache_rows(rows), all_rows, full_ids=full_ids)
        t_probe += time.perf_counter() - t0
        for r, pr in zip(rows, outs):
            results[r].checkpoints.append({"pos": len(results[r].token_ids), **kinds[r], "probe": pr})

    def land():
        """Finish the answers under way (on their own) and record their probes."""
        nonlocal t_probe, answering
        if answering is None:
            return
        t0 = time.perf_counter()
        ans, entries = answering
        prober.complete(ans)
        for (r, pos, _, kinds), pr in zip(entries, ans.finish()):
            results[r].checkpoints.append({"pos": pos, **kinds, "probe": pr})
            last_answer[r] = pr.tokens         # entries come in position order: the row's latest answer wins
        answering = None
        t_probe += time.perf_counter() - t0

    def flush(last: bool = False):
        """Probe the pending entries: the cue pass now; their answers then go on in the batch's decode steps
        (``fuse``; the next flush or the end finishes any left), else to their end at once."""
        nonlocal t_probe, answering
        land()
        t0 = time.perf_counter()
        entries = sorted(pending, key=lambda e: (e[0], e[1]))
        rows, cuts = [e[0] for e in entries], [e[2] for e in entries]
        full = all(c == mask.shape[1] for c in cuts)
        all_rows = full and len(rows) == len(rows_in) and len(set(rows)) == len(rows_in)
        ans = prober.start(cache, mask, cache_rows(rows), all_rows, cuts=None if full else cuts,
                           drafts=[last_answer.get(r) for r in rows],
                           contexts=[prompt_ids[r] + results[r].token_ids[:pos] for r, pos, _, _ in entries])
        pending.clear()
        answering = (ans, entries)
        if fuse and not last and not ans.done:
            ans.separate()                     # off the batch cache, which goes on with the next token
        t_probe += time.perf_counter() - t0
        if not fuse or last or ans.done:
            land()

    def step_with_answers(feed, pos):
        """The batch's decode step with the answers' next step in the same pass; returns the batch's logits."""
        nonlocal t_gen, t_probe
        ans = answering[0]
        inp, apos = ans.feed(lookahead=False)
        t0 = time.perf_counter()
        out, aout = forward_pair(model, (feed[:, None], mask, pos, cache), (inp, ans.m, apos, ans.sub))
        dt = time.perf_counter() - t0
        share = inp.shape[0] / (inp.shape[0] + feed.shape[0])   # the pass's time, split by rows
        t_gen, t_probe = t_gen + dt * (1 - share), t_probe + dt * share
        t0 = time.perf_counter()
        ans.absorb(aout, fused=True)
        if ans.done:
            land()
        t_probe += time.perf_counter() - t0
        return out

    def drop_finished(gone: set[int]):
        """Drop the cache rows of traces that have ended and wait for no deferred probe."""
        nonlocal mask, full_ids, rows_in, n_dropped
        n_dropped += 1
        keep = [i for i, r in enumerate(rows_in) if r not in gone]
        K = torch.tensor(keep, device=dev)
        cache.batch_select_indices(K)
        mask, full_ids = mask[K], full_ids[K]
        rows_in = [rows_in[i] for i in keep]

    with torch.no_grad():
        t0 = time.perf_counter()
        cache = new_cache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        t_gen += time.perf_counter() - t0
        for step in range(cfg.max_new_tokens + 1):
            t0 = time.perf_counter()
            if cfg.temperature > 0:
                probs = torch.softmax(logits / cfg.temperature, -1)
                if cfg.top_p < 1.0:
                    sp, si = probs.sort(-1, descending=True)
                    keep = sp.cumsum(-1) - sp < cfg.top_p
                    probs = torch.zeros_like(probs).scatter(-1, si, sp * keep)
                    probs = probs / probs.sum(-1, keepdim=True)
                if len(rows_in) < B:
                    # draw for every original row, as before any row left, so the live rows get the same draws
                    allp = torch.zeros(B, probs.shape[1], dtype=probs.dtype, device=probs.device)
                    allp[:, 0] = 1
                    allp[torch.tensor(rows_in, device=probs.device)] = probs
                    nxt = torch.multinomial(allp.cpu(), 1, generator=gcpu)[rows_in, 0].to(dev)
                else:
                    nxt = torch.multinomial(probs.cpu(), 1, generator=gcpu)[:, 0].to(dev)
            else:
                nxt = logits.argmax(-1)
            nxt_l = nxt.tolist()
            t_gen += time.perf_counter() - t0
            # A row that ends here (end of sequence or the token cap) gets its final checkpoint now.
            for i, r in enumerate(rows_in):
                if done[r]:
                    continue
                n_gen = len(results[r].token_ids)
                if nxt_l[i] in eos or n_gen >= cfg.max_new_tokens:
                    results[r].finish_reason = "eos" if nxt_l[i] in eos else "length"
                    want[r] = {"kind": "final", "is_step": want.get(r, {}).get("is_step", False),
                               "is_transition": False}
                elif cfg.transitions and n_gen > 0 and _is_transition_start(piece(nxt_l[i])) \
                        and text_tail[r].endswith((" ", "\n", ".", ",")):
                    w = want.setdefault(r, {"kind": "transition", "is_step": False, "is_transition": True})
                    w["kind"], w["is_transition"] = "transition", True
            if want and defer:
                rows = sorted(want)
                for r in rows:
                    pending.append((r, len(results[r].token_ids), mask.shape[1], want[r]))
                    if want[r]["kind"] == "final":
                        done[r] = True
                if any(want[r]["kind"] == "interval" for r in rows) or all(done) or len(pending) >= 2 * B:
                    flush(last=all(done))
                want = {}
            if want:
                rows = sorted(want)
                do_probe(rows, want)
                for r in rows:
                    if want[r]["kind"] == "final":
                        done[r] = True
                if on_checkpoint is not None:
                    for r in on_checkpoint(rows, results) or ():
                        if not done[r]:
                            done[r] = True
                            results[r].finish_reason = "stopped"
                want = {}
            if all(done):
                break
            if compact:
                waiting = {e[0] for e in pending}     # rows whose deferred probes still need their cache rows
                gone = {r for r in rows_in if done[r] and r not in waiting}
                if gone and len(rows_in) - len(gone) < 2:
                    # two rows at least: on CPU a one-row matrix product takes another kernel than a batch's
                    # (SmolLM2's down_proj rounds differently in bf16), and dropping rows must change nothing
                    gone.discard(max(gone))
                if gone and 4 * len(gone) >= len(rows_in):
                    nxt_l = [t for t, r in zip(nxt_l, rows_in) if r not in gone]
                    drop_finished(gone)
            t0 = time.perf_counter()
            feed = torch.tensor([pad if done[r] else nxt_l[i] for i, r in enumerate(rows_in)], device=dev)
            live = torch.tensor([0 if done[r] else 1 for r in rows_in], device=dev, dtype=mask.dtype)
            mask = torch.cat([mask, live[:, None]], dim=1)
            if probe_mode.startswith("reencode"):
                full_ids = torch.cat([full_ids, feed[:, None]], dim=1)
            pos = mask.sum(-1, keepdim=True) - 1
            if answering is not None:
                t_gen += time.perf_counter() - t0
                logits = step_with_answers(feed, pos)[:, -1].float()
            else:
                out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True)
                logits = out.logits[:, -1].float()
                t_gen += time.perf_counter() - t0
            for i, r in enumerate(rows_in):
                if done[r]:
                    continue
                results[r].token_ids.append(nxt_l[i])
                text_tail[r] = (text_tail[r] + piece(nxt_l[i]))[-16:]
                n_gen = len(results[r].token_ids)
                kinds = None
                if cfg.every and n_gen % cfg.every == 0:
                    kinds = {"kind": "interval", "is_step": False, "is_transition": False}
                if cfg.steps and text_tail[r].endswith("\n\n") and not text_tail[r].endswith("\n\n\n"):
                    kinds = {"kind": "step", "is_step": True, "is_transition": False}
                if kinds:
                    want[r] = kinds
        if pending:
            flush(last=True)
        land()
    for r in results:
        r.gen_s, r.probe_s = t_gen / B, t_probe / B
    if stats is not None:
        for k, v in (prober.stats if prober is not None else {}).items():
            stats[k] = stats.get(k, 0) + v
        stats["rows_dropped"] = stats.get("rows_dropped", 0) + n_dropped
    return results


# --- a run: dataset x model x config, into the store ------------------------------------------------------
def run_config(model_name: str, info: dict, dataset_id: str, seed: int, cfg: GenConfig) -> dict:
    """What identifies a run (its hash is the cache key). Batch size and device are left out."""
    return {"source": "generate", "model": {"name": model_name, "sha256": info.get("sha256"), "kind": info["kind"],
                                            "dtype": info["dtype"]},
            "dataset": {"id": dataset_id, "seed": seed}, "gen": asdict(cfg), "stopline_runner": 1}


def build_prompt(tok, question: str, cfg: GenConfig) -> str:
    content = cfg.prompt_template.format(question=question)
    msgs = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": content}]
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return content + "\n"


def to_tables(run_id: str, questions, results: list[TraceResult], tok, answer_type: str):
    """Arrow tables of traces and checkpoints for a finished batch."""
    tr = {k: [] for k in ("run_id", "question_id", "text", "n_tokens", "final_raw", "final_norm", "em", "f1",
                          "finish_reason", "gen_s", "probe_s")}
    ck = {k: [] for k in ("run_id", "question_id", "ck_idx", "pos", "kind", "is_step", "is_transition",
                          "answer_raw", "answer_norm", "em", "f1", "p_mean", "p_geo", "p_min", "p_first",
                          "entropy", "answer_tokens", "probe_tokens")}
    for q, r in zip(questions, results):
        gold = normalize_gold(q.gold, answer_type)
        text = tok.decode(r.token_ids, skip_special_tokens=True)
        fraw = extract(text, answer_type)
        fnorm = normalize(fraw, answer_type)
        fem, ff1 = score(fnorm, gold, answer_type)
        for k, v in (("run_id", run_id), ("question_id", q.id), ("text", text), ("n_tokens", len(r.token_ids)),
                     ("final_raw", fraw), ("final_norm", fnorm), ("em", fem), ("f1", ff1),
                     ("finish_reason", r.finish_reason), ("gen_s", r.gen_s), ("probe_s", r.probe_s)):
            tr[k].append(v)
        for i, c in enumerate(r.checkpoints):
            pr: Probe | None = c["probe"]
            final = c["kind"] == "final"
            if final:   # the full-length answer is the model's own; the probe at the end gives its signals
                raw, norm, em, f1 = fraw, fnorm, fem, ff1
            else:
                raw = pr.raw if pr else None
                norm = normalize(raw, answer_type) if raw else ""
                em, f1 = score(norm, gold, answer_type)
            sig = pr.signals() if pr else {"p_mean": None, "p_geo": None, "p_min": None, "p_first": None,
                                           "entropy": None}
            for k, v in (("run_id", run_id), ("question_id", q.id), ("ck_idx", i), ("pos", c["pos"]),
                         ("kind", c["kind"]), ("is_step", bool(c["is_step"])),
                         ("is_transition", bool(c["is_transition"])), ("answer_raw", raw), ("answer_norm", norm),
                         ("em", em), ("f1", f1), ("answer_tokens", 0 if final else (len(pr.tokens) if pr else 0)),
                         ("probe_tokens", pr.probe_tokens if pr else 0)):
                ck[k].append(v)
            for k in ("p_mean", "p_geo", "p_min", "p_first", "entropy"):
                v = sig[k]
                ck[k].append(None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    traces = pa.table(tr)
    cks = pa.table({**ck, "ck_idx": pa.array(ck["ck_idx"], pa.int16()), "pos": pa.array(ck["pos"], pa.int32()),
                    **{k: pa.array(ck[k], pa.float64()) for k in ("p_mean", "p_geo", "p_min", "p_first", "entropy")},
                    "answer_tokens": pa.array(ck["answer_tokens"], pa.int32()),
                    "probe_tokens": pa.array(ck["probe_tokens"], pa.int32())})
    return traces, cks


def run(store, model_name: str, dataset_id: str, *, limit: int | None = None, seed: int = 42,
        cfg: GenConfig | None = None, batch_size: int = 8, device: str = "auto", loaded=None,
        show_progress: bool = True, dataset_options: dict | None = None, probes: str = "batched") -> dict:
    """Generate and probe a dataset with a model into the store; resumes an interrupted run.

    ``probes``: 'batched' (default) defers the probes that fire for a few rows at a time to the next interval
    checkpoint and runs them in one batch; 'immediate' probes each checkpoint when it comes, exactly as the
    live controller does, so that ``verify-controller`` can expect bit-for-bit the same probe outputs (with
    bf16 weights, batching changes rounding: a trial answer differs at a few percent of checkpoints).
    Recorded in the run's config under ``execution`` with the batch size and device (how the run was
    computed, not part of its identity: verify-controller re-runs it with the same batch size)."""
    from ..datasets import load_dataset
    from ..progress import progress
    from .models import load
    cfg = cfg or GenConfig()
    ds_opts = dict(dataset_options or {})
    if dataset_id.startswith("rg:"):
        ds_opts.setdefault("seed", seed)
    ds = load_dataset(dataset_id, limit, **ds_opts)
    model, tok, info = loaded or load(model_name, device)
    cfg = cfg.resolved(ds.answer_type, info["kind"])
    if probes not in ("batched", "immediate"):
        raise StoplineError(f"probes must be 'batched' or 'immediate', not {probes!r}")
    config = {**run_config(model_name, info, ds.id, seed, cfg),
              "execution": {"probes": probes, "batch_size": batch_size, "device": info.get("device")}}
    with store.transaction() as con:
        run_id, created = store.get_or_create_run(model=model_name, dataset=ds.id, answer_type=ds.answer_type,
                                                  source="generated", config=config, n_planned=len(ds), con=con)
        store.put_questions(ds.id, ds.questions, con=con)
        if ds.attribution:
            store.set_attribution(ds.id, ds.attribution, con=con)
        con.execute("UPDATE runs SET n_planned = GREATEST(COALESCE(n_planned, 0), ?), status = 'running' "
                    "WHERE run_id = ?", [len(ds), run_id])
    finished = store.finished_questions(run_id)
    todo = [q for q in ds.questions if q.id not in finished]
    prompts = {q.id: build_prompt(tok, q.text, cfg) for q in todo}
    todo.sort(key=lambda q: len(prompts[q.id]))       # similar lengths together: less padding
    bar = progress(total=len(ds), desc=f"{model_name} on {ds.id}", unit="q", disable=not show_progress,
                   initial=len(ds) - len(todo))
    t_start, n_tok = time.perf_counter(), 0
    try:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            try:
                results = generate_batch(model, tok, [prompts[q.id] for q in batch], cfg,
                                         defer=probes == "batched")
            except RuntimeError as e:
                if "out of memory" in str(e).lower():
                    raise StoplineError(f"out of memory at batch size {len(batch)}; {i} questions of this session "
                                        "are saved", hint="resume with a smaller --batch-size") from None
                raise
            traces, cks = to_tables(run_id, batch, results, tok, ds.answer_type)
            store.put_results(traces, cks)
            n_tok += sum(len(r.token_ids) for r in results)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - t_start):.0f}")
    finally:
        bar.close()
    store.set_run_status(run_id, "complete")
    from ..frontier import materialise
    materialise(store, run_id)          # the sweep the dashboard draws first
    r = store.run(run_id)
    return {"run_id": run_id, "created": created, "n_questions": r["n_questions"], "n_checkpoints": r["n_checkpoints"],
            "em_full": r["em_full"], "mean_tokens": r["mean_tokens"], "generated_now": len(todo),
            "seconds": round(time.perf_counter() - t_start, 2), "tokens": n_tok}
