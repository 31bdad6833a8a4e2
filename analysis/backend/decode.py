"""Generation with checkpoint probes: the decode loop.

Decoding runs in lockstep over a left-padded batch with one KV cache. Checkpoints: every N generated
tokens, after a step boundary (a blank line), just before a transition word ("Wait", "Hmm", ...), and at
the trace's end. At a checkpoint the probe appends the cue (e.g. ``So the final answer is \\boxed{``) and
greedily decodes a short answer, recording the answer's token probabilities and the next-token entropy
right after the cue.

Probes (``probe.py``) reuse the prefix's KV cache; the batch forms and the probing modes are described
there. ``records.py`` turns the results into the store's tables; ``analysis.ingest.pipeline`` runs a
dataset through this loop into the store.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from analysis.backend.fused import can_fuse, forward_pair
from analysis.backend.placement import is_transition_start, token_pieces
from analysis.backend.probe import MAX_DRAFT, Prober, eos_ids
from analysis.backend.prompts import GenConfig


@dataclass
class TraceResult:
    index: int
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    checkpoints: list[dict] = field(default_factory=list)   # pos, kind flags, probe
    gen_s: float = 0.0
    probe_s: float = 0.0



def generate_batch(model, tok, prompts: list[str], cfg: GenConfig, probe_mode: str = "reuse",
                   probe: bool = True, on_checkpoint=None, defer: bool | None = None,
                   stats: dict | None = None, drafts: bool = True, compact: bool = True,
                   fuse: bool = True, probe_due=None) -> list[TraceResult]:
    """Generate full traces for a batch of prompts, probing at every checkpoint.

    ``on_checkpoint(rows, results)``, when given, is called after each round of probes with the rows that
    just got a checkpoint (the newest is ``results[r].checkpoints[-1]``); the rows it returns stop there
    (finish reason 'stopped'): that is how the live controller plugs in. A stopped row is treated like a
    row that met its end of sequence, so the others compute exactly what they would have without it.
    ``probe_due(rows, results, kinds)``, with ``on_checkpoint``, is asked first which of the rows that just
    got a checkpoint (``kinds[r]``: kind, is_step, is_transition) to probe: the others' checkpoints are kept
    without a probe (``"probe": None``), computing nothing, and are not passed to ``on_checkpoint`` (the live
    controller: rows whose request's schedule is not due there, or not yet at its min_tokens). A lone row
    probed where the batch had more is probed as two entries of itself, so its numbers are those a shared
    probe pass gives (a one-row product rounds differently in bf16; the repeat is counted in ``repeated``).

    ``defer`` (default: on when probes reuse the cache and no ``on_checkpoint`` waits for the answers):
    probes at step boundaries, transition words and trace ends, which fire for a row or two at a time,
    wait for the next interval checkpoint (where every row probes) and run in that batch, each masked to
    its own prefix. Far fewer small forward passes; the answers are greedy on the same prefixes, though their
    attention spans masked key columns, which CPU kernels round differently (probabilities differ in the last
    bits, and rarely an answer token). Deferred probes also get the row's previous
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

    from analysis.backend.kvcache import new_cache   # lazy: kvcache loads transformers
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

    piece = token_pieces(tok)

    def do_probe(rows: list[int], kinds: dict[int, dict], ask: list[int] | None = None):
        """Probe ``ask`` (default: all of ``rows``); the other rows' checkpoints are kept without a probe."""
        nonlocal t_probe
        ask = rows if ask is None else ask
        if not ask or prober is None:
            for r in rows:
                results[r].checkpoints.append({"pos": len(results[r].token_ids), **kinds[r], "probe": None})
            return
        t0 = time.perf_counter()
        entries = ask * 2 if len(ask) == 1 < len(rows_in) and len(rows) > 1 else ask
        all_rows = len(entries) == len(rows_in) and len(set(entries)) == len(entries)
        outs = dict(zip(ask, prober.run(cache, mask, cache_rows(entries), all_rows, full_ids=full_ids)))
        t_probe += time.perf_counter() - t0
        for r in rows:
            results[r].checkpoints.append({"pos": len(results[r].token_ids), **kinds[r], "probe": outs.get(r)})

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
                elif cfg.transitions and n_gen > 0 and is_transition_start(piece(nxt_l[i])) \
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
                ask = rows
                if probe_due is not None and on_checkpoint is not None:
                    due = set(probe_due(rows, results, want) or ())
                    ask = [r for r in rows if r in due]
                do_probe(rows, want, ask)
                for r in rows:
                    if want[r]["kind"] == "final":
                        done[r] = True
                if on_checkpoint is not None and ask:
                    for r in on_checkpoint(ask, results) or ():
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

