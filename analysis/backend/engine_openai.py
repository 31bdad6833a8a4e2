"""The openai engine: generate and probe through OpenAI-compatible servers (vLLM, SGLang, llama.cpp's server,
TGI), one or several replicas, instead of a model in this process.

Generation: one streamed completions request per question, the prompt sent as token ids (the chat template
applied with the run's tokenizer, as the transformers engine does), greedy or sampled as configured. The
trace's token ids are the ones the server generated (vLLM returns them with ``return_token_ids``); a server
that returns none gets its text re-tokenised, which the run's execution info then says (re-tokenising can
change the ids, and with them the prefixes the probes share with the trace).

Checkpoints are placed as the tokens stream in (``placement.Placer``, the transformers engine's rule) and each
probe is sent at once, while the trace is still being written, so its prefix is still in the server's prefix
cache: prompt = prompt ids + trace ids up to the checkpoint + cue ids, greedy, ``max_tokens`` = the answer
cap, stopped at a closing brace or a newline, with the top-k log-probabilities of each answer token.

Signals: the answer tokens' probabilities (mean, geometric mean, min, first) exactly as in-process; the
entropy right after the cue from the top ``k`` (20) log-probabilities at the answer's first position: the
listed tokens contribute exactly, and the mass the server did not list (1 minus the listed probabilities) is
counted as if it were spread over tokens each as likely as the least likely listed one, the least entropy that
mass can carry. So the signal is a lower bound of the exact entropy, tight when the distribution is peaked
(docs/engines.md gives its measured error).

Replicas: each question goes, with all its probes, to the replica with the fewest questions in flight. A
replica that refuses connections, drops a stream, answers 5xx or sends a reply that cannot be read (a stream
line that is not JSON, a completion without choices) is set aside with a growing back-off, and the question
starts again from nothing on another (up to ``max_retries`` times): the run ends with every question exactly
once. A 4xx answer (a wrong model name, a bad request) is not retried: it is our error.

Errors name a replica two ways: ``str(e)`` by its URL with any ``user:password@`` left out (``shown``), for
this machine's messages and logs; ``e.public`` by its number ("replica 1 of 2"), for the gateway's clients,
who must not learn where the upstream is.

About 470 lines: the replicas, the stream, the probe and the retry loop share the engine's state (semaphores,
replica health, statistics); the gateway reuses the same pieces, so they stay one class.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from analysis.backend.decode import TraceResult
from analysis.backend.placement import Placer, token_pieces
from analysis.backend.probe import Probe, answer_signal_probs, may_close
from analysis.backend.prompts import GenConfig
from analysis.core.answers import answer_ended, probe_answer
from analysis.core.errors import StoplineError

TOP_K = 20          # log-probabilities asked for at each answer token (vLLM's default --max-logprobs is 20)
TOKENIZER_CHECK = "Stopline checks: 12,345 + 6.7 = \\boxed{\\frac{1}{2}} -- naïve café, Ωmega 日本語\n\nWait, 3x^2?"
PROBE_STOPS = ["}", "\n"]


class ReplicaFailed(Exception):
    """A replica failed in a way another replica may not (connection refused or dropped, a 5xx, a reply that
    cannot be read). ``str(e)``: the replica by its URL (no credentials); ``public``: by its number."""

    def __init__(self, r: "Replica", detail: str):
        self.detail, self.public = detail, f"{r.label}: {detail}"
        super().__init__(f"{r.shown}: {detail}")


class UpstreamRefused(StoplineError):
    """A replica answered 4xx: the request is wrong for it (not retried). ``public``: without its URL; ``status``
    the HTTP status, ``param`` the field the server named (if any)."""

    def __init__(self, r: "Replica", detail: str, status: int = 400, param: str | None = None):
        self.public, self.status, self.param = f"{r.label} refused the request: {detail}", status, param
        super().__init__(f"the server at {r.shown} refused the request: {detail}")


def redact(url: str) -> str:
    """``url`` without the ``user:password@`` it may carry (for messages and logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _v1(url: str) -> str:
    return _root(url) + "/v1"


@dataclass
class Replica:
    url: str
    client: object = None
    in_flight: int = 0
    failures: int = 0
    down_until: float = 0.0
    version: str | None = None
    owned_by: str | None = None
    block_size: int | None = None
    max_model_len: int | None = None       # the model's context (vLLM, SGLang: GET /v1/models); None: not said
    label: str = "replica 1 of 1"          # how the gateway's clients hear of it (never its URL)

    @property
    def shown(self) -> str:
        """The URL for messages and logs: without credentials."""
        return redact(self.url)


@dataclass
class EngineStats:
    gen_tokens: int = 0
    probes: int = 0
    probe_prompt_tokens: int = 0
    probe_cached_tokens: int | None = None     # None: the server does not report cached tokens
    cacheable_tokens: int = 0                  # full KV blocks of the probes' shared prefixes
    answer_tokens: int = 0
    probes_past_context: int = 0               # checkpoints whose probe prompt would not fit the model's context
    retries: int = 0
    replica_failures: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # the last few failures, for the run's execution info
    ids_from: str = "server"                   # server | tokenizer (re-tokenised text)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["probe_cache_hit_rate"] = (self.probe_cached_tokens / self.probe_prompt_tokens
                                     if self.probe_cached_tokens is not None and self.probe_prompt_tokens else None)
        d["cacheable_share"] = self.cacheable_tokens / self.probe_prompt_tokens if self.probe_prompt_tokens else None
        return d


def entropy_from_top(logprobs: dict[str, float] | list[float]) -> float:
    """Entropy (nats) of the next-token distribution from its top-k log-probabilities, the unlisted mass
    counted as tokens each as likely as the least likely listed one (a lower bound of the exact entropy)."""
    lp = sorted((logprobs.values() if isinstance(logprobs, dict) else logprobs), reverse=True)
    p = [math.exp(x) for x in lp if x is not None and x > -math.inf]
    if not p:
        return math.nan
    h = -sum(q * math.log(q) for q in p if q > 0)
    rest = max(0.0, 1.0 - sum(p))
    if rest > 0 and p[-1] > 0:
        h += -rest * math.log(min(p[-1], rest))
    return h


class OpenAIEngine:
    """Generate and probe through one or more OpenAI-compatible servers (use ``async with``)."""

    def __init__(self, base_urls: list[str], model: str, tok, *, eos: set[int] | None = None,
                 api_key: str | None = None, concurrency: int = 8, timeout: float = 600.0, max_retries: int = 4,
                 top_k: int = TOP_K, retry_base_s: float = 0.5, token_ids: bool = True,
                 connections: int | None = None):
        if not base_urls:
            raise StoplineError("the openai engine needs at least one --base-url")
        urls = list(dict.fromkeys(u.rstrip("/") for u in base_urls))
        self.replicas = [Replica(u, label=f"replica {i + 1} of {len(urls)}") for i, u in enumerate(urls)]
        self.model, self.tok, self.api_key = model, tok, api_key
        self.concurrency, self.timeout, self.max_retries, self.top_k = concurrency, timeout, max_retries, top_k
        self.retry_base_s = retry_base_s
        self.connections = connections  # per replica; None: 4 x concurrency + 8; 0: no limit (a gateway's streams)
        self.token_ids = token_ids      # ask for the generated ids (False: as a server that has none)
        self.stats = EngineStats()
        self.eos = set(eos) if eos is not None else {tok.eos_token_id} - {None}
        self.piece = token_pieces(tok)             # piece(token_id): its text alone, decoded once
        self._q_sem = asyncio.Semaphore(concurrency)
        self._p_sem = asyncio.Semaphore(2 * concurrency)   # probes: short, and waiting would let prefixes go cold
        self.info: dict = {}

    # --- connections --------------------------------------------------------------------------------------
    async def __aenter__(self):
        import httpx
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        most = 4 * self.concurrency + 8 if self.connections is None else self.connections or None
        limits = httpx.Limits(max_connections=most, max_keepalive_connections=4 * self.concurrency)
        for r in self.replicas:
            r.client = httpx.AsyncClient(headers=headers, limits=limits,
                                         timeout=httpx.Timeout(self.timeout, connect=10.0))
        return self

    async def __aexit__(self, *exc):
        for r in self.replicas:
            if r.client is not None:
                await r.client.aclose()

    async def _post(self, r: Replica, path: str, body: dict) -> dict:
        import httpx
        try:
            resp = await r.client.post(_v1(r.url) + path, json=body)
        except httpx.RequestError as e:          # refused, dropped, timed out, a body that cannot be decoded
            raise ReplicaFailed(r, f"{type(e).__name__}: {e}") from None
        return self._json(r, resp)

    async def get_json(self, r: Replica, path: str) -> dict:
        """GET a /v1 path of a replica as a JSON object (ReplicaFailed when it cannot be had)."""
        import httpx
        try:
            resp = await r.client.get(_v1(r.url) + path, timeout=10)
        except httpx.RequestError as e:
            raise ReplicaFailed(r, f"GET /v1{path}: {type(e).__name__}: {e}") from None
        return self._json(r, resp)

    def _json(self, r: Replica, resp) -> dict:
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise ReplicaFailed(r, f"HTTP {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            raise UpstreamRefused(r, f"HTTP {resp.status_code}: {_message(resp)}", resp.status_code, _param(resp))
        try:
            out = resp.json()
        except (ValueError, RecursionError):
            out = None
        if not isinstance(out, dict):
            raise ReplicaFailed(r, f"HTTP {resp.status_code} with a body that is not a JSON object: "
                                   f"{resp.text[:80]!r}")
        return out

    # --- checks before a run --------------------------------------------------------------------------------
    async def check(self) -> dict:
        """Check every replica before anything is written: reachable, serving ``model``, returning
        log-probabilities, tokenising as the run's tokenizer does. Returns what the run records about them."""
        import httpx
        problems, alive = [], []
        for r in self.replicas:
            try:
                resp = await r.client.get(_v1(r.url) + "/models", timeout=10)
            except (httpx.TransportError, httpx.TimeoutException) as e:
                problems.append(f"{r.shown}: cannot connect ({type(e).__name__}{': ' + str(e) if str(e) else ''})")
                continue
            if resp.status_code in (401, 403):
                raise StoplineError(f"the server at {r.shown} refused the API key (HTTP {resp.status_code})",
                                    hint="give --api-key or set OPENAI_API_KEY")
            if resp.status_code != 200:
                problems.append(f"{r.shown}: GET /v1/models answered HTTP {resp.status_code}; is it an "
                                "OpenAI-compatible server's /v1 URL?")
                continue
            served = [m.get("id") for m in resp.json().get("data", [])]
            if self.model not in served:
                raise StoplineError(f"the server at {r.shown} does not serve a model named {self.model!r}",
                                    hint="it serves: " + ", ".join(map(str, served)))
            card = next(m for m in resp.json()["data"] if m.get("id") == self.model)
            r.owned_by = card.get("owned_by")
            n_ctx = card.get("max_model_len")
            r.max_model_len = n_ctx if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0 else None
            alive.append(r)
        if not alive:
            raise StoplineError("no server answered: " + "; ".join(problems),
                                hint="start one (python -m analysis vllm-server) or check --base-url")
        for r in self.replicas:
            if r not in alive:
                r.down_until, r.failures = time.monotonic() + self.retry_base_s, 1
        first = alive[0]
        for r in alive:
            await self._server_info(r)
        ids_ok = await self._check_logprobs_and_ids(first)
        await self._check_tokenizer(first)
        self.stats.ids_from = "server" if ids_ok else "tokenizer"
        self.info = {"server": first.owned_by, "server_version": first.version,
                     "block_size": first.block_size, "max_model_len": first.max_model_len,
                     "replicas": len(self.replicas),
                     "unreachable_at_start": problems, "token_ids": self.stats.ids_from}
        return self.info

    async def _server_info(self, r: Replica) -> None:
        """The server's version (vLLM: GET /version) and KV block size (vLLM: /metrics' cache_config_info)."""
        import httpx
        try:
            v = await r.client.get(_root(r.url) + "/version", timeout=10)
            if v.status_code == 200:
                r.version = v.json().get("version")
            m = await r.client.get(_root(r.url) + "/metrics", timeout=10)
            if m.status_code == 200:
                b = re.search(r'cache_config_info\{[^}]*block_size="(\d+)"', m.text)
                r.block_size = int(b.group(1)) if b else None
        except (httpx.HTTPError, ValueError):
            pass

    async def _check_logprobs_and_ids(self, r: Replica) -> bool:
        ids = self.tok("Hello", add_special_tokens=False)["input_ids"]
        body = {"model": self.model, "prompt": ids, "max_tokens": 2, "temperature": 0, "logprobs": self.top_k,
                "return_token_ids": True}
        try:
            out = await self._post(r, "/completions", body)
        except StoplineError as e:
            if "logprob" in str(e).lower():
                raise StoplineError(f"the server at {r.shown} does not return {self.top_k} log-probabilities per "
                                    f"token ({str(e).split(': ', 2)[-1][:200]}); the openai engine needs them for "
                                    "the probes' signals", hint=f"vLLM: start it with --max-logprobs {self.top_k} or more, "
                                                            "or ask for fewer with --top-logprobs") \
                    from None
            raise
        except ReplicaFailed as e:
            raise StoplineError(f"the server failed a first completion: {e}") from None
        ch = first_choice(r, out)
        lp = ch.get("logprobs") or {}
        if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("top_logprobs"):
            raise StoplineError(f"the server at {r.shown} returned no log-probabilities for a completion that asked "
                                "for them; the openai engine needs them for the probes' signals",
                                hint="vLLM, SGLang and llama.cpp's server return them; check the server's options")
        return ch.get("token_ids") is not None

    async def _check_tokenizer(self, r: Replica) -> None:
        """The server must tokenise as the run's tokenizer does: the prompts and probes are sent as ids."""
        import httpx
        mine = self.tok(TOKENIZER_CHECK, add_special_tokens=False)["input_ids"]
        theirs = None
        try:
            resp = await r.client.post(_root(r.url) + "/tokenize", timeout=30,
                                       json={"model": self.model, "prompt": TOKENIZER_CHECK, "add_special_tokens": False})
            if resp.status_code == 200:
                theirs = resp.json().get("tokens")
        except httpx.HTTPError:
            pass
        if theirs is None:            # no /tokenize: the prompt's token count the server reports
            out = await self._post(r, "/completions", {"model": self.model, "prompt": TOKENIZER_CHECK,
                                                       "max_tokens": 1, "temperature": 0})
            n = out.get("usage", {}).get("prompt_tokens")
            if n is not None and n not in (len(mine), len(mine) + 1):      # + 1: a BOS the server adds
                raise StoplineError(f"the tokenizer does not match the server's model {self.model!r}: a test text "
                                    f"is {len(mine)} tokens here and {n} on the server",
                                    hint="give --tokenizer the served model's own tokenizer (its folder or hub id)")
            return
        if list(theirs) != list(mine):
            at = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            raise StoplineError(f"the tokenizer does not match the server's model {self.model!r}: a test text "
                                f"tokenises differently from token {at} on ({len(mine)} tokens here, {len(theirs)} "
                                "on the server)",
                                hint="give --tokenizer the served model's own tokenizer (its folder or hub id)")

    async def metrics(self) -> dict[str, float]:
        """vLLM's prefix-cache counters summed over the replicas that answer (empty if none exposes them)."""
        import httpx
        tot: dict[str, float] = {}
        for r in self.replicas:
            try:
                m = await r.client.get(_root(r.url) + "/metrics", timeout=10)
            except httpx.HTTPError:
                continue
            for name in ("prefix_cache_queries_total", "prefix_cache_hits_total"):
                for v in re.findall(rf"^vllm:{name}(?:{{[^}}]*}})? ([0-9.eE+]+)$", m.text, re.M):
                    tot[name] = tot.get(name, 0.0) + float(v)
        return tot

    # --- replicas --------------------------------------------------------------------------------------------
    async def _pick(self) -> Replica:
        while True:
            now = time.monotonic()
            up = [r for r in self.replicas if r.down_until <= now]
            if up:
                return min(up, key=lambda r: (r.in_flight, r.failures))
            await asyncio.sleep(max(0.05, min(r.down_until for r in self.replicas) - now))

    def _failed(self, r: Replica, err: str) -> None:
        r.failures += 1
        r.down_until = time.monotonic() + min(30.0, self.retry_base_s * 2 ** (r.failures - 1))
        self.stats.replica_failures[r.shown] = self.stats.replica_failures.get(r.shown, 0) + 1
        self.stats.errors = (self.stats.errors + [err[:300]])[-5:]

    # --- a question: its trace, streamed, and its probes --------------------------------------------------
    async def question(self, prompt_ids: list[int], cfg: GenConfig, seed: int | None = None,
                       label: str = "") -> TraceResult:
        """A question's trace and checkpoints, retried on another replica when one fails."""
        async with self._q_sem:
            return await self._retrying(lambda r: self._question(r, prompt_ids, cfg, seed),
                                        f"question {label or '?'}", "the questions finished before it are saved")

    async def _question(self, r: Replica, prompt_ids: list[int], cfg: GenConfig, seed: int | None) -> TraceResult:
        cue_ids = self.tok(cfg.cue, add_special_tokens=False)["input_ids"]
        res = TraceResult(0)
        placer = Placer(cfg, self.piece)
        tasks: list[tuple[int, dict, asyncio.Task]] = []
        ids: list[int] = res.token_ids

        def fire(marks):
            for pos, kinds in marks:
                tasks.append((pos, kinds, asyncio.ensure_future(self._probe(r, prompt_ids + ids[:pos], cue_ids, cfg))))

        t0 = time.perf_counter()
        try:
            def take(new, text=None):
                for t in new:
                    fire(placer.feed(t))
                    ids.append(t)

            text, finish, got_ids = await self._stream(r, prompt_ids, cfg, seed, take)
            if not got_ids:        # the server returned text only: its tokens are our tokenizer's
                self.stats.ids_from = "tokenizer"
                take(self.tok(text, add_special_tokens=False)["input_ids"])
            res.finish_reason = "eos" if finish == "stop" else "length"
            fire(placer.end())
            res.gen_s = time.perf_counter() - t0
            probes = await asyncio.gather(*(t for _, _, t in tasks))
        except BaseException:
            for _, _, t in tasks:
                t.cancel()
            await asyncio.gather(*(t for _, _, t in tasks), return_exceptions=True)
            raise
        res.probe_s = sum(p[1] for p in probes)
        res.checkpoints = [{"pos": pos, **kinds, "probe": pr} for (pos, kinds, _), (pr, _) in zip(tasks, probes)]
        self.stats.gen_tokens += len(ids)
        return res

    async def _stream(self, r: Replica, prompt_ids, cfg: GenConfig, seed, on_ids, extra: dict | None = None):
        """Stream a completion; ``on_ids(new_ids, text)`` as the ids arrive (end-of-sequence ids dropped; ``text``:
        the chunk's text). ``extra``: more fields of the request (the gateway's client's stop sequences and
        penalties). Returns (text, finish_reason, whether the server gave ids)."""
        import httpx
        body = {"model": self.model, "prompt": prompt_ids, "max_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "stream": True, **(extra or {})}
        if self.token_ids:
            body["return_token_ids"] = True
        if cfg.temperature > 0 and seed is not None:
            body["seed"] = seed
        text, finish, got_ids = [], None, False
        try:
            async with r.client.stream("POST", _v1(r.url) + "/completions", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    self._json(r, resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    for piece, new, fin in stream_choices(r, data):
                        text.append(piece)
                        if new is not None:
                            got_ids = True
                            new = [t for t in new if t not in self.eos]
                            if new:
                                on_ids(new, piece)
                        finish = fin or finish
        except httpx.RequestError as e:
            raise ReplicaFailed(r, f"stream broke: {type(e).__name__}: {e}") from None
        if finish is None:
            raise ReplicaFailed(r, "the stream ended without a finish reason")
        return "".join(text), finish, got_ids

    async def _probe(self, r: Replica, ids: list[int], cue_ids: list[int], cfg: GenConfig) -> tuple[Probe, float]:
        """One probe: (Probe, seconds). The server stops at each closing brace; where that brace closed one inside
        the answer (``\\frac{14}{3}``), the answer goes on from there (its prefix cached) until the cue's box
        closes. Near the end of the model's context (a trace that fills it) the answer gets the tokens left, and a
        probe whose prompt alone would not fit is not sent: that checkpoint has no trial answer (the server would
        refuse the request, and with it the trace)."""
        prompt = ids + cue_ids
        room = cfg.max_answer_tokens if r.max_model_len is None else min(cfg.max_answer_tokens,
                                                                           r.max_model_len - len(prompt))
        if room < 1:
            self.stats.probes_past_context += 1
            return Probe("", [], [], math.nan, 0), 0.0
        toks: list[int] = []
        probs: list[float] = []
        top, dt, cached = None, 0.0, None
        while True:
            async with self._p_sem:
                t0 = time.perf_counter()
                out = await self._post(r, "/completions", {
                    "model": self.model, "prompt": prompt + toks, "max_tokens": room - len(toks), "temperature": 0,
                    "stop": PROBE_STOPS, "logprobs": self.top_k,
                    **({"return_token_ids": True} if self.token_ids else {})})
                dt += time.perf_counter() - t0
            try:
                got, got_probs, got_top, eos = self.answer_part(out)
            except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as e:   # another shape
                raise ReplicaFailed(r, f"a probe's reply cannot be read ({type(e).__name__}: {str(e)[:80]})") \
                    from None
            self.stats.probe_prompt_tokens += len(prompt) + len(toks)
            if r.block_size:        # the prompt's full blocks another request computed: the trace's, or the answer's so far
                self.stats.cacheable_tokens += ((len(prompt) + len(toks)) if toks else len(ids)) // r.block_size \
                    * r.block_size
            c = ((out.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
            cached = cached if c is None else (cached or 0) + c
            top = got_top if not toks else top
            toks, probs = toks + got, probs + got_probs
            if (eos or not got or len(toks) >= room or not may_close(self.piece(toks[-1]))
                    or answer_ended(self.tok.decode(toks))):
                break
        raw = probe_answer(self.tok.decode(toks))
        sig = answer_signal_probs(self.tok, toks, probs, raw, self.piece)     # the in-process rule
        pr = Probe(raw, toks, sig, entropy_from_top(top) if top else math.nan, len(cue_ids) + len(toks))
        st = self.stats
        st.probes += 1
        st.answer_tokens += len(pr.tokens)
        if cached is not None:
            st.probe_cached_tokens = (st.probe_cached_tokens or 0) + cached
        return pr, dt

    def answer_part(self, out: dict) -> tuple[list[int], list[float], dict | None, bool]:
        """A completions reply to a probe: its answer tokens (up to and including the one the server stopped at;
        an end of sequence left out), their probabilities, the top log-probabilities after its first token's
        context, and whether it ended on an end of sequence."""
        choices = out.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ValueError("it has no choices")
        ch = choices[0]
        lp = ch.get("logprobs") or {}
        toks = ch.get("token_ids")
        probs = [math.exp(x) if x is not None else math.nan for x in (lp.get("token_logprobs") or [])]
        eos = False
        if toks is None:        # text only: a server leaves the stop string it matched out of the text
            text = ch.get("text") or ""
            matched = next((ch[k] for k in ("stop_reason", "matched_stop") if k in ch), ...)   # vLLM's, SGLang's
            if ch.get("finish_reason") == "stop" and isinstance(matched, str):
                # the brace it stopped at, so that a nested answer (\frac{14}{3}) goes on; once: a server told to
                # keep its stop strings has it already (the text cannot end with it otherwise: it would stop there)
                text += "" if text.endswith(matched) else matched
            elif ch.get("finish_reason") == "stop" and matched is not ...:
                eos = True              # no stop string matched: an end of sequence (None, or its token id)
            toks = self.tok(text, add_special_tokens=False)["input_ids"]
        toks = list(toks)
        while toks and toks[-1] in self.eos:            # the end of sequence is not an answer token
            toks.pop()
            eos = True
        top = (lp.get("top_logprobs") or [None])[0]
        return toks, probs[:len(toks)], top, eos

    async def probe_on(self, ids: list[int], cue_ids: list[int], cfg: GenConfig, prefer: Replica | None = None) -> Probe:
        """Probe a given prefix (prompt + trace ids) on ``prefer`` while it is up (a trace's probes on one replica
        share its prefix cache), else the least loaded, retried on another when one fails (``reprobe``)."""
        out = await self._retrying(lambda r: self._probe(r, ids, cue_ids, cfg), "a probe",
                                   "the traces probed before it are saved", prefer)
        return out[0]

    async def _retrying(self, attempt_on, what: str, saved: str, prefer: Replica | None = None):
        """``attempt_on(replica)`` on ``prefer`` while it is up, else the least loaded replica; a replica that fails
        is set aside (back-off) and the attempt made again elsewhere, up to ``max_retries`` times."""
        last = None
        for attempt in range(self.max_retries + 1):
            r = prefer if prefer is not None and prefer.down_until <= time.monotonic() else await self._pick()
            r.in_flight += 1
            try:
                out = await attempt_on(r)
                r.failures = 0
                return out
            except ReplicaFailed as e:
                last = str(e)
                self._failed(r, last)
                self.stats.retries += 1
                await asyncio.sleep(self.retry_base_s * 2 ** attempt)
            finally:
                r.in_flight -= 1
        raise StoplineError(f"{what} failed on every attempt ({self.max_retries + 1}); last: {last}",
                            hint=f"{saved}; run again to resume")


def first_choice(r: Replica, out: dict) -> dict:
    """A completion's first choice; ReplicaFailed when the reply has none."""
    choices = out.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ReplicaFailed(r, f"a completion without choices: {json.dumps(out)[:80]}")
    return choices[0]


def stream_choices(r: Replica, data: str) -> list[tuple[str, list[int] | None, str | None]]:
    """One ``data:`` line of a completions stream as (text, token ids or None, finish reason) per choice;
    ReplicaFailed, naming what is wrong, for a line that is not such a chunk or carries an error."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise ReplicaFailed(r, f"the stream sent a line that is not JSON: {data[:80]!r}") from None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
        raise ReplicaFailed(r, f"the stream sent a chunk that is not a completion chunk: {data[:80]!r}")
    if chunk.get("error"):
        raise ReplicaFailed(r, f"error in stream: {str(chunk['error'])[:200]}")
    out = []
    for ch in chunk.get("choices", []):
        ch = ch if isinstance(ch, dict) else {"text": ch}
        text, ids, fin = ch.get("text"), ch.get("token_ids"), ch.get("finish_reason")
        if not isinstance(text, (str, type(None))) or not isinstance(fin, (str, type(None))) or not (
                ids is None or isinstance(ids, list) and all(type(t) is int for t in ids)):
            raise ReplicaFailed(r, f"the stream sent a choice of another shape: {data[:80]!r}")
        out.append((text or "", ids, fin))
    return out


def question_seed(seed: int, question_id: str) -> int:
    """A sampled question's seed on the server: the same whichever replica or attempt runs it."""
    return zlib.crc32(f"{seed}:{question_id}".encode()) & 0x7FFFFFFF


def _param(resp) -> str | None:
    """The field a 4xx answer names (OpenAI's and vLLM's ``error.param``), if any."""
    try:
        j = resp.json()
    except ValueError:
        return None
    p = (j.get("error") or {}).get("param") if isinstance(j, dict) and isinstance(j.get("error"), dict) else None
    return p if isinstance(p, str) else None


def _message(resp) -> str:
    try:
        j = resp.json()
        m = j.get("message") or (j.get("error") or {}).get("message") if isinstance(j, dict) else None
        return str(m or j)[:300]
    except ValueError:
        return resp.text[:300]
