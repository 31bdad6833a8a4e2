"""The gateway: an OpenAI-compatible endpoint that applies a preset in front of any OpenAI-compatible server.

    python -m analysis serve --upstream http://127.0.0.1:8000/v1 --preset P.json --tokenizer DIR

Clients point their base URL at the gateway. Per request it resolves the preset's routing (rules on tags and
metadata passed as ``extra_body={"stopline": {"tags": {...}, "meta": {...}, "request_id": "..."}}``, A/B arm,
exploration share), streams the upstream's tokens on to the client, places checkpoints as they stream in (the
recording engines' rule: ``backend/placement.py``), sends each checkpoint's probe to the upstream (its prefix is
hot in the prefix cache: ``backend/engine_openai.py``) and decides with the live controller, which calls the
replay's own ``fires``. A token after a checkpoint reaches the client only once that checkpoint has decided to
go on, so the client never sees more than the replay counts. When the rule fires, the upstream request and its
probes are cancelled and the response ends: with the trial answer written as the model would end
(``--on-stop answer``: the end-of-thinking cue, the answer and the closing brace), or with the cue and the
upstream's own answer section (``--on-stop continue``). The response keeps the OpenAI shape plus a ``stopline``
object (in the last chunk when streaming).

Every checkpoint and request end goes to the decision log (``controller.DecisionLog``: the format ``monitor``
reads), each record with the preset version that made it. The preset file is re-read when it changes (a
preset given as its ``sl1.…`` link has none), or comes through ``POST /admin/preset`` with the admin key
(``--admin-key``, not the clients' key; without one the route is off); an invalid new version is refused and
the old one kept. ``GET /metrics`` serves Prometheus counters. The gateway binds 127.0.0.1 unless told
otherwise; any other address needs ``--api-key``, checked on every request in constant time. The upstream's
key is never logged.

An upstream that fails, or sends what cannot be read, ends the request with ``UpstreamFailure`` (the app's 502,
or an error event on a stream; 504 past ``--request-timeout``): its client hears of replicas by number, this
server's log names the URL (without credentials), and the decision log gets the request's final record
(``cause: upstream_failed``), which the monitor and ``check-log`` leave out of the preset's figures. An
upstream's 4xx about the request (``UpstreamRejected``: more tokens than its context holds, …) is the client's
error, not a failure: its status and message go to the client, and its final record says ``cause:
upstream_rejected``. A request the gateway itself fails (a bug) ends with ``cause: gateway_failed``. A client
that leaves before the end (a stream closed, a whole response no longer awaited) cancels its upstream request
and probes, and its final record says ``cause: client_disconnected``: the monitor counts it apart, neither a
stop of the preset's nor a full-length answer.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from analysis.backend.engine_openai import OpenAIEngine, ReplicaFailed, UpstreamRefused, first_choice
from analysis.backend.placement import Placer
from analysis.backend.prompts import CUES, PROMPTS, GenConfig, build_prompt
from analysis.core.answers import closed_box_end, extract
from analysis.core.errors import PresetError, StoplineError
from analysis.presets.routing import EXPLORE
from analysis.production.controller import Controller, Decision, DecisionLog
from analysis.production.gateway_metrics import Metrics
from analysis.production.gateway_request import BadRequest, chat_messages, check_fields, sampling, strict_json

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_BODY = 1 << 20          # bytes of a request body (--max-body-kb)
MAX_DEPTH = 4               # how deeply stopline.tags / stopline.meta may nest (routing reads their top level)
MAX_TOKENS = 2 ** 31 - 1    # the most max_tokens any request may ask for (--max-tokens-cap lowers it)
REQUEST_TIMEOUT = 1800.0    # seconds a request may take, all told (--request-timeout)
CLIENT_LEFT = "client_disconnected"     # the cause of a request whose client left before its end
GATEWAY_FAILED = "gateway_failed"       # the cause of a request the gateway itself failed (a bug: its log says)
SEED_RANGE = (-2 ** 63, 2 ** 63 - 1)
UPSTREAM_HINT = "start it (python -m analysis vllm-server, or vllm serve …) or check --upstream"
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
logger = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """A request the upstream failed: ``public`` for its client (replicas by number, no URL), ``str(e)`` for
    this server's log (URLs without credentials); ``status`` 502, or 504 past the request's deadline."""

    def __init__(self, private: str, public: str, status: int = 502):
        super().__init__(private[:500])
        self.public, self.status = URL.sub("<upstream>", public)[:300], status


class UpstreamRejected(Exception):
    """A request the upstream refused as wrong for it (a 4xx about the request: more tokens than its context
    holds, …): the client's error, not a failure of the upstream. Its client gets the upstream's status and
    message (replicas by number, no URL), no replica is set aside for it, and it is counted as
    ``upstream_rejected``. A 401 or 403 (the gateway's key for the upstream) is no client's error: a failure."""

    def __init__(self, e: UpstreamRefused, max_tokens_field: str = "max_tokens"):
        super().__init__(str(e))
        self.status, self.param, self.public = e.status, e.param, URL.sub("<upstream>", e.public)[:500]
        if max_tokens_field != "max_tokens":       # the client's own name for it, not the one sent upstream
            self.param = max_tokens_field if self.param == "max_tokens" else self.param
            self.public = re.sub(r"\bmax_tokens\b", max_tokens_field, self.public)


def rejected(e: BaseException) -> bool:
    """Whether an upstream's error says the request itself is wrong (the client's 4xx)."""
    return isinstance(e, UpstreamRefused) and e.status not in (401, 403)


def upstream_failure(e: BaseException, r, timeout: float) -> UpstreamFailure:
    """What an exception from the upstream's side of a request says to the client and to the log."""
    if isinstance(e, TimeoutError):
        msg = f"no answer within the gateway's deadline of {timeout:g} s (--request-timeout)"
        return UpstreamFailure(f"{r.shown}: {msg}", msg, 504)
    if isinstance(e, (ReplicaFailed, StoplineError)):
        return UpstreamFailure(str(e), getattr(e, "public", None) or str(e))
    return UpstreamFailure(f"{r.shown}: the upstream's reply cannot be read: {type(e).__name__}: {e}",
                           f"{r.label}: the upstream's reply cannot be read ({type(e).__name__})")


class VersionedLog:
    """The decision log, each record stamped with the preset version that made the decision."""

    def __init__(self, log: DecisionLog, version: str):
        self.log, self.version = log, version

    def write(self, rec: dict) -> None:
        self.log.write({**rec, "preset_version": self.version})


@dataclass
class Options:
    on_stop: str = "answer"                 # answer | continue
    on_upstream_error: str = "error"        # error | answer (the trial answer so far, when the upstream fails)
    continue_tokens: int = 256              # on_stop=continue: the most tokens of the model's own answer section
    answer_type: str = "number"
    every: int = 32
    steps: bool = True
    transitions: bool = True
    cue: str | None = None
    max_answer_tokens: int = 20
    prompt_template: str | None = None      # the calibration run's (default: the answer type's), for question_chars
    system: str | None = None               # the calibration run's system message, if it had one
    max_body: int = MAX_BODY
    max_tokens_cap: int | None = None       # requests asking for more get 400 (--max-tokens-cap)
    request_timeout: float = REQUEST_TIMEOUT


class Gateway:
    def __init__(self, upstreams: list[str], preset: str, tok, eos: set[int], kind: str = "instruct", *,
                 log_path: str, model: str | None = None, api_key: str | None = None, admin_key: str | None = None,
                 upstream_key: str | None = None, options: Options | None = None, concurrency: int = 64,
                 calibration: dict | None = None, engine: OpenAIEngine | None = None, listen: str | None = None):
        """``preset``: its file (re-read when it changes), or the preset itself, a ``sl1.…`` link or JSON text
        (then only ``POST /admin/preset`` replaces it, in memory). ``calibration``: ``{"db": PATH, "run":
        RUN_ID}``, the run the preset was calibrated on and its store (``calibration_of``), named in the log's
        header and preset records so that the monitor reads the log as it is. ``engine``: the upstream's,
        already checked (``serve`` checks it before anything is written; else the app's start-up does).
        ``listen``: the address it was told to listen on (loopback: requests must name this machine; None: each
        connection's own local address)."""
        check_keys(api_key, admin_key)
        self.listen = listen
        self.opt = options or Options()
        self.tok, self.kind, self.api_key, self.admin_key = tok, kind, api_key, admin_key
        self.cue = self.opt.cue or CUES[kind]
        self.cue_ids = tok(self.cue, add_special_tokens=False)["input_ids"]
        self.wrappers = question_wrappers(tok, self.opt)
        self._reload_lock = asyncio.Lock()
        self._reload_mutex = threading.RLock()
        self.engine = engine or OpenAIEngine(upstreams, model or "", tok, eos=eos, api_key=upstream_key,
                                             concurrency=concurrency, connections=0)
        self.preset_path, text = read_preset(preset)
        self.calibration = calibration
        self.metrics = Metrics()
        mtime = self.preset_path.stat().st_mtime_ns if self.preset_path else None
        try:
            loaded = self._load(text)       # an invalid preset: refused before the log begins
        except PresetError as e:
            raise PresetError(e.message, file=self.preset_path and str(self.preset_path), field=e.field,
                              hint=e.hint) from None
        self.log = DecisionLog(log_path, {"gateway": {"on_stop": self.opt.on_stop, "upstreams": len(upstreams)},
                                          "answer_type": self.opt.answer_type,
                                          "checkpoints": {"every": self.opt.every, "steps": self.opt.steps,
                                                          "transitions": self.opt.transitions},
                                          "preset": loaded[0].to_dict(), **self._calibration()})
        self._use(*loaded)
        self._mtime = mtime
        self.in_flight: dict[str, dict] = {}    # request id -> its request, from its start to its final record

    def claim(self, req: dict) -> None:
        """A request id for one request at a time: a second request under an id still in flight is refused
        (409), so that the decision log, which names requests by id, never holds two at once (the monitor
        could not tell their records apart). The id is free again once its request has its final record, before
        its client hears the end (``release``)."""
        rid = req["request_id"]
        if rid in self.in_flight:
            raise BadRequest(f"a request with id {rid!r} is still in flight; an id names one request at a time "
                             "(send it again once that one has ended, or give another id)",
                             "stopline.request_id", status=409)
        self.in_flight[rid] = req

    def release(self, req: dict) -> None:
        """``req``'s id free again (a no-op once it is, or when a later request holds it)."""
        if self.in_flight.get(req["request_id"]) is req:
            del self.in_flight[req["request_id"]]

    def _finish(self, req: dict, ctl: Controller, sess, *args, **kw) -> dict:
        """The request's final record, and its id free again."""
        try:
            return ctl.finish(sess, *args, **kw)
        finally:
            self.release(req)

    # --- the preset, reloaded when its file changes ---------------------------------------------------------
    def reload(self, force: bool = False, text: str | None = None) -> bool:
        """Load the preset (from ``text``, which is then written to the preset file if there is one, or from the
        file when it changed). An invalid preset raises PresetError and leaves the current one in place."""
        with self._reload_mutex:            # one at a time, from worker threads and the event loop alike
            return self._reload(force, text)

    def _reload(self, force: bool, text: str | None) -> bool:
        given = text is not None
        if not given:
            if self.preset_path is None:            # given as a link or JSON: nothing to watch
                return False
            mtime = self.preset_path.stat().st_mtime_ns
            if not force and mtime == self._mtime:
                return False
            text = self.preset_path.read_text()
        loaded = self._load(text)
        if given and self.preset_path is not None and self.preset_path.read_text() != text:
            tmp = self.preset_path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.preset_path)
        self._use(*loaded, reloaded=True)
        if self.preset_path is not None:
            self._mtime = self.preset_path.stat().st_mtime_ns
        return True

    def _load(self, text: str):
        """(preset, its controller, its version) from its text; PresetError for a preset the controller cannot
        run."""
        from analysis.presets.schema import loads
        preset = loads(text)
        ctl = Controller(preset, self.opt.answer_type, every=self.opt.every, steps=self.opt.steps,
                         transitions=self.opt.transitions)        # refuses what the controller cannot run
        return preset, ctl, hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def _use(self, preset, ctl: Controller, version: str, reloaded: bool = False) -> None:
        ctl.log = VersionedLog(self.log, version)
        self.controller, self.version, self.preset = ctl, version, preset
        unknown = False
        if reloaded:
            before, self.calibration = self.calibration, self._calibration_after_reload(preset)
            unknown = before is not None and self.calibration is None
        # (a calibration that became unknown is said as null: the monitor must not fall back to the header's)
        self.log.write({"type": "preset", "preset_version": version, "preset": preset.to_dict(),
                        **({"calibration": None} if unknown else self._calibration())})

    def _calibration_after_reload(self, preset) -> dict | None:
        """A reloaded preset certified on another run than the log's calibration (a recalibration's) promises
        what that run says: that run, in the same store, when it is there; else no calibration for this version
        (the monitor is told with --run and --db), never the start's run, which promised something else."""
        cert = (preset.certificate or {}).get("run")
        if not isinstance(cert, str) or cert in ("", "explore") or (self.calibration or {}).get("run") == cert:
            return self.calibration
        try:
            return calibration_of(preset, None, (self.calibration or {}).get("db"))
        except StoplineError as e:
            logger.warning("the reloaded preset was certified on run %s, which cannot be found (%s): its log "
                           "records name no calibration run", cert, e.message)
            return None

    def _calibration(self) -> dict:
        return {"calibration": dict(self.calibration)} if self.calibration else {}

    async def current_async(self) -> Controller:
        """``current`` from the event loop: a preset file that changed is read in a worker thread (a reload may
        open the calibration store, which waits while another process writes it), one reload at a time; the
        streams in flight go on meanwhile."""
        try:
            changed = self.preset_path is not None and self.preset_path.stat().st_mtime_ns != self._mtime
        except OSError:
            changed = True
        if changed:
            async with self._reload_lock:
                return await asyncio.to_thread(self.current)
        return self.controller

    def current(self) -> Controller:
        try:
            self.reload()
        except (PresetError, StoplineError, OSError, ValueError) as e:
            self.metrics.reload_errors.inc()
            self._mtime = self.preset_path.stat().st_mtime_ns if self.preset_path.exists() else self._mtime
            self.log.write({"type": "preset_error", "error": str(e)[:500], "kept": self.version})
        return self.controller

    # --- requests -------------------------------------------------------------------------------------------
    def parse(self, body, chat: bool, headers: dict | None = None) -> dict:
        """The request's prompt ids, question text (for routing), sampling and Stopline fields; BadRequest
        names the field, also one the gateway cannot honour or does not know (``gateway_request``: nothing is
        silently ignored). Stopline's fields come from ``extra_body={"stopline": {...}}``, or from headers for
        clients that cannot add to the body: ``X-Stopline-Tags`` / ``X-Stopline-Meta`` (JSON objects) and
        ``X-Request-Id`` (the body wins where both say)."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        sl = body.get("stopline") or {}
        if not isinstance(sl, dict):
            raise BadRequest("stopline must be an object", "stopline")
        sl = {**from_headers(headers or {}), **sl}
        for k in ("tags", "meta"):
            if not isinstance(sl.get(k, {}), dict):
                raise BadRequest(f"stopline.{k} must be an object", f"stopline.{k}")
            if depth(sl.get(k, {})) > MAX_DEPTH:
                raise BadRequest(f"stopline.{k} nests deeper than {MAX_DEPTH} levels (routing reads its top level)",
                                 f"stopline.{k}")
        check_fields(body, chat)
        if chat:
            msgs = chat_messages(body.get("messages"))
            try:
                text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            except Exception as e:      # the template's own refusal (its raise_exception), or what it cannot render
                raise BadRequest(f"the model's chat template refuses these messages: {str(e)[:200]}",
                                 "messages") from None
            ids = self.encode(text, "messages", add_special_tokens=False)
            question = bare_question(next((m["content"] for m in reversed(msgs) if m["role"] == "user"), ""),
                                     self.wrappers)
        else:
            p = body.get("prompt")
            if isinstance(p, str) and p:
                ids, question = self.encode(p, "prompt"), bare_question(p, self.wrappers)
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                ids, question = list(p), ""
            else:
                raise BadRequest("prompt must be a non-empty string or a list of token ids", "prompt")
        # the one of the two names given, a null one not given; both: max_completion_tokens, the newer name
        given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
        which = given[0] if given else "max_tokens"
        cap = self.opt.max_tokens_cap or MAX_TOKENS
        mt = body.get(which)
        mt = min(1024, cap) if mt is None else mt       # not asked for: our default, within the cap
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            raise BadRequest(f"{which} must be a positive integer", which)
        if mt > cap:
            raise BadRequest(f"{which} must be at most {cap}" + (" (this gateway's --max-tokens-cap)"
                                                                 if self.opt.max_tokens_cap else ""), which)
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                                 or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
            raise BadRequest("seed must be an integer (64-bit) or null", "seed")
        temp, top_p = (body.get(k) for k in ("temperature", "top_p"))       # null: the default, as OpenAI's
        temp, top_p = 0.0 if temp is None else temp, 1.0 if top_p is None else top_p
        if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not 0 <= temp < float("inf"):
            raise BadRequest("temperature must be a number ≥ 0", "temperature")
        if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
            raise BadRequest("top_p must be a number in (0, 1]", "top_p")
        n = body.get("n")
        if n is not None and (type(n) is not int or n != 1):
            raise BadRequest("n must be 1: more than one choice is not supported through the Stopline gateway (one "
                             "trace per request)", "n")
        stream = False if body.get("stream") is None else body["stream"]
        if not isinstance(stream, bool):
            raise BadRequest("stream must be true or false", "stream")
        rid = sl.get("request_id") or uuid.uuid4().hex
        if not isinstance(rid, str) or len(rid) > 200:
            raise BadRequest("stopline.request_id must be a string of at most 200 characters", "stopline.request_id")
        model = body.get("model") or self.engine.model
        if model != self.engine.model:
            raise BadRequest(f"this gateway serves the model {self.engine.model!r}, not {model!r}", "model", 404)
        return {"ids": ids, "question": question, "max_tokens": mt, "temperature": float(temp), "top_p": float(top_p),
                "stream": stream, "request_id": rid, "tags": sl.get("tags", {}), "meta": sl.get("meta", {}),
                "model": model, "seed": seed, "sampling": sampling(body), "max_tokens_field": which}

    def encode(self, text: str, field: str, **kw) -> list[int]:
        """The token ids of a request's text; BadRequest naming the field for text the tokenizer cannot read (an
        unpaired surrogate, which JSON can carry)."""
        try:
            return self.tok(text, **kw)["input_ids"]
        except (TypeError, ValueError, UnicodeError) as e:
            raise BadRequest(f"{field} holds text that cannot be tokenized (an unpaired surrogate?): "
                             f"{type(e).__name__}", field) from None

    def config(self, req: dict) -> GenConfig:
        return GenConfig(every=self.opt.every, steps=self.opt.steps, transitions=self.opt.transitions,
                         max_new_tokens=req["max_tokens"], temperature=req["temperature"], top_p=req["top_p"],
                         max_answer_tokens=self.opt.max_answer_tokens, cue=self.cue)

    async def events(self, req: dict):
        """The response as ("text", piece) events, then ("end", info). An upstream that fails or sends what
        cannot be read, or a request still unanswered at its deadline (``request_timeout``), ends it with
        UpstreamFailure once the log has its error and final records; nothing is left running or waiting. A client
        that leaves (the events cancelled, or closed before their end) gets its final record too
        (``client_disconnected``)."""
        try:
            ctl = await self.current_async()
        except asyncio.CancelledError:        # the client left while the preset was being reloaded: its record
            self.abandoned(req)
            raise
        req["preset_version"] = ctl.log.version      # the version deciding it (a failure's records name it)
        sess = ctl.open(req["request_id"], req["question"], req["meta"], req["tags"])
        cfg = self.config(req)
        eng = self.engine
        t_req = time.perf_counter()
        deadline = t_req + self.opt.request_timeout

        def left() -> float:
            return max(0.0, deadline - time.perf_counter())
        placer = Placer(cfg, eng.piece)
        setting = sess.route.setting
        # a budget reads positions only: no probes, except on exploration requests, whose logged trial answers
        # are what a recalibration certifies other settings on
        probing = sess.route.arm == EXPLORE or setting.policy.probes_needed(setting.params)
        ids: list[int] = []
        chunks: deque = deque()            # (start, ids, text) not yet released to the client
        pending: deque = deque()           # (pos, kinds, probe task), in order
        dropped: list = []                 # probe tasks of checkpoints past a stop sequence: cancelled
        stops = Stops(req["sampling"].get("stop"))
        extra = {**req["sampling"], **({"include_stop_str_in_output": True} if stops.stops else {})}
        queue: asyncio.Queue = asyncio.Queue()
        decision, finish, error = None, None, None
        probe_tokens, written = 0, ""      # written: the gateway's own text after a stop (cue, answer, brace)
        r = producer = getter = None
        set_aside = False                  # the replica was set aside for this request's failure
        sent = False                       # the stream sent a token: a failure after that is the request's

        def got(new, text):
            nonlocal sent
            queue.put_nowait(("ids", new, text))
            sent = True

        async def produce():
            """The trace's stream. A replica that fails before its first token is set aside and the stream
            begun again on another (nothing was sent, no probe began); after that, the failure is the request's."""
            nonlocal r
            for attempt in range(eng.max_retries + 1):
                try:
                    _, fin, got_ids = await eng._stream(r, req["ids"], cfg, req.get("seed"), got, extra)
                    if not got_ids:
                        raise StoplineError("the upstream returns no token ids (vLLM's return_token_ids); the "
                                            "gateway needs them to place checkpoints")
                    queue.put_nowait(("done", fin))
                    return
                except ReplicaFailed as e:
                    if sent or rejected(e) or attempt == eng.max_retries or len(eng.replicas) == 1:
                        queue.put_nowait(("error", e))
                        return
                    eng._failed(r, str(e))
                    self.metrics.failovers.inc()
                    nxt = await eng._pick()
                    r.in_flight, nxt.in_flight = r.in_flight - 1, nxt.in_flight + 1
                    r = nxt
                except StoplineError as e:
                    queue.put_nowait(("error", e))
                    return
                except Exception as e:      # whatever else the stream raised: the request must hear of it, not wait
                    queue.put_nowait(("error", upstream_failure(e, r, self.opt.request_timeout)))
                    return

        try:
            r = await eng._pick()
            r.in_flight += 1         # the least loaded replica takes the next request
            producer = asyncio.ensure_future(produce())
            ended = False
            while True:
                # release what no undecided checkpoint holds back
                limit = pending[0][0] if pending else len(ids)
                while chunks and chunks[0][0] + len(chunks[0][1]) <= limit:
                    stops.release(chunks.popleft()[2])
                text = stops.sendable(ended)
                if text:
                    yield ("text", text)
                if ended and not pending:
                    break
                if pending and (pending[0][2] is None or pending[0][2].done()):
                    # the next checkpoint in order has its probe (or needs none): decide there
                    pos, kinds, task = pending.popleft()
                    pr = task.result()[0] if task is not None else None
                    probe_tokens += pr.probe_tokens if pr else 0
                    t0 = time.perf_counter()
                    sess.checkpoint(pos, (pr.raw or None) if pr else None, pr.signals() if pr else None,
                                    answer_tokens=len(pr.tokens) if pr else 0, probe_tokens=pr.probe_tokens if pr else 0,
                                    kind=kinds["kind"], is_step=kinds["is_step"], is_transition=kinds["is_transition"],
                                    answer_type=ctl.answer_type)
                    d = ctl.decide([sess])[0]
                    self.metrics.decision_latency.observe(time.perf_counter() - t0)
                    if d.stop:
                        decision = d
                        break
                    continue
                waits = [] if ended else [getter or asyncio.ensure_future(queue.get())]
                getter = waits[0] if waits else None
                if pending:
                    waits.append(pending[0][2])
                done, _ = await asyncio.wait(waits, timeout=left(), return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise TimeoutError
                if getter in done:
                    item = getter.result()
                    getter = None
                    if item[0] == "ids":
                        new, text = item[1], item[2]
                        start = len(ids)
                        last = stops.received(start, text)
                        if last is not None:      # a stop sequence: no decision on text the client never gets
                            dropped += [p[2] for p in pending if p[0] > last and p[2] is not None]
                            for task in dropped:
                                task.cancel()
                            pending = deque(p for p in pending if p[0] <= last)
                        for t in new:
                            for pos, kinds in placer.feed(t):
                                if stops.cut is not None or not sess.due(pos, kinds["is_step"], kinds["is_transition"],
                                                                         ctl.every):
                                    continue        # not on this request's probe schedule: no probe, no decision
                                pending.append((pos, kinds, asyncio.ensure_future(
                                    eng._probe(r, req["ids"] + ids[:pos], self.cue_ids, cfg)) if probing else None))
                            ids.append(t)
                        chunks.append((start, list(new), text))
                    elif item[0] == "done":
                        finish, ended = item[1], True
                    else:
                        error, ended = item[1], True
                        break
            if decision is not None:              # stopped: the tokens up to the checkpoint, then the answer
                producer.cancel()
                held = [c for c in chunks if c[0] < decision.pos]
                text = stops.flush()                # held back in case it began a stop sequence: none came before
                if text:
                    yield ("text", text)
                for start, cids, text in held:
                    take = cids[: decision.pos - start]
                    yield ("text", text if len(take) == len(cids) else self.tok.decode(take))
                answer = decision.answer
                if not probing and self.opt.on_stop == "answer":      # the one probe a budget needs: its answer
                    pr = (await asyncio.wait_for(eng._probe(r, req["ids"] + ids[:decision.pos], self.cue_ids, cfg),
                                                 left()))[0]
                    answer, probe_tokens = pr.raw, probe_tokens + pr.probe_tokens     # the metrics: the server's work
                    sess.answered(pr.raw, len(pr.tokens), ctl.answer_type)   # the record: the replay's charge
                written = await asyncio.wait_for(self._on_stop(r, req, ids[:decision.pos], answer, cfg), left())
                if not probing and self.opt.on_stop == "continue":    # a budget's answer: what the model wrote
                    said = written[len(self.cue):-1]
                    sess.answered(said.strip() or None, len(self.tok(said, add_special_tokens=False)["input_ids"]),
                                  ctl.answer_type)
                yield ("text", written)
            elif error is not None:
                if rejected(error):                 # the request is wrong, the upstream is fine: no answer, no failover
                    raise UpstreamRejected(error, req["max_tokens_field"])
                if self.opt.on_upstream_error != "answer":
                    raise error
                eng._failed(r, str(error))          # set aside: the answer's probe goes to another replica
                set_aside = True
                for _, _, text in chunks:             # the tokens the model did write are the client's
                    stops.release(text)
                chunks.clear()
                text = stops.sendable(True)
                if text:
                    yield ("text", text)
                answer, cause, spent = await asyncio.wait_for(
                    self._answer_after_failure(req, ids, cfg, sess, ctl, error), left())
                probe_tokens += spent
                written = self.cue + answer + "}"
                yield ("text", written)
            else:                                  # the model's own answer, decoded off the event loop
                text = stops.text() if stops.cut is not None else await asyncio.to_thread(self.tok.decode, ids)
                own = extract(text, ctl.answer_type)
        except (asyncio.CancelledError, GeneratorExit):
            # the client left: its stream closed, or its wait for a whole response cancelled
            self._client_left(req, sess, ctl, len(ids), probe_tokens)
            raise
        except UpstreamRejected as e:
            self._rejected(req, sess, ctl, len(ids), e, probe_tokens)
            raise
        except (ReplicaFailed, StoplineError, UpstreamFailure, TimeoutError) as e:
            if r is not None and not set_aside and isinstance(e, (ReplicaFailed, UpstreamFailure)) \
                    and len(eng.replicas) > 1:      # (a 4xx to a probe is no replica's fault; one replica: no other)
                eng._failed(r, str(e))             # set aside (back-off): the next requests go to another replica
            failure = e if isinstance(e, UpstreamFailure) else upstream_failure(e, r, self.opt.request_timeout)
            self._failed_request(req, sess, ctl, decision.pos if decision is not None else len(ids), failure,
                                 probe_tokens)
            raise failure from None
        except Exception:
            # our own failure (the app logs it, with its error record): the request still ends in the decision log
            self._ended(req, sess, ctl, decision.pos if decision is not None else len(ids), GATEWAY_FAILED,
                        probe_tokens)
            raise
        finally:
            if r is not None:
                r.in_flight -= 1
            if getter is not None:
                getter.cancel()
            # a budget's checkpoints have no probe; a request that never got a replica, no producer
            tasks = [t for t in (producer, *(t for _, _, t in pending), *dropped) if t is not None]
            for t in tasks:
                t.cancel()
            # shielded: once a stream's client has gone, its task is cancelled again at every await (Starlette's
            # anyio cancel scope), which would cut the upstream connections' closing short and leave them generating
            try:
                await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            except asyncio.CancelledError:      # the client left while the request was ending: it still ends
                self._client_left(req, sess, ctl, len(ids), probe_tokens)        # (a no-op once it has its record)
                raise
        if error is None:
            r.failures = 0                       # it answered: back to the front of the queue
        n = decision.pos if decision is not None else len(ids)
        if error is not None:                    # answered after an upstream failure
            rec = self._finish(req, ctl, sess, cause=cause)
        elif decision is not None:
            rec = self._finish(req, ctl, sess, None, n)
        else:
            rec = self._finish(req, ctl, sess, own, n)
        # usage counts what the client receives (the cue too) and, as the upstream's own usage does, the end of
        # sequence the model wrote (the trace's ids leave it out); tokens_emitted is the replay's count (the stop's
        # position plus the answer's tokens), as the decision log's
        eos = int(decision is None and error is None and finish == "stop" and stops.cut is None)
        info = {"stopped": decision is not None or error is not None, "position": n,
                "tokens_emitted": rec["tokens_emitted"],
                "completion_tokens": n + eos + (len(self.tok(written, add_special_tokens=False)["input_ids"])
                                                if written else 0),
                "probe_tokens": probe_tokens, "setting": sess.route.setting.label(), "arm": sess.route.arm,
                "explore": sess.route.arm == EXPLORE, "preset_version": ctl.log.version,
                "request_id": req["request_id"], "checkpoints": sess.n,
                "finish_reason": "stop" if decision is not None or error is not None or finish == "stop" else "length",
                "prompt_tokens": len(req["ids"]), "seconds": round(time.perf_counter() - t_req, 3)}
        if rec.get("shadow_pos") is not None:
            info["shadow_position"] = rec["shadow_pos"]
        if error is not None:
            info["cause"] = cause
        self.metrics.finished(info)
        yield ("end", info)

    def _client_left(self, req, sess, ctl, n: int, probe_tokens: int) -> None:
        """A request whose client left before its end, in the decision log: its final record, ``cause:
        client_disconnected``, with what was done by then (``n`` tokens generated, the checkpoints decided and
        their probes). Neither the preset's stop nor a full-length answer: the monitor counts it apart."""
        self._ended(req, sess, ctl, n, CLIENT_LEFT, probe_tokens)

    def _ended(self, req, sess, ctl, n: int, cause: str, probe_tokens: int) -> None:
        """A request ended by ``cause`` (not the preset's stop, nor its full length): its final record with what
        was done by then (``n`` tokens generated), and in the metrics the tokens it generated and probed (they
        were computed all the same). A no-op for a request that already has its final record."""
        if sess.finished:
            self.release(req)
            return
        rec = self._finish(req, ctl, sess, None, n, cause=cause)
        self.metrics.finished({"stopped": rec["stopped"], "arm": sess.route.arm, "cause": cause,
                               "tokens_emitted": rec["tokens_emitted"], "probe_tokens": probe_tokens})

    def abandoned(self, req: dict) -> None:
        """A request whose client left before its response began (a stream that never started): its final
        record, ``cause: client_disconnected``, nothing done (the preset in use: no reload here, on the event loop)."""
        ctl = self.controller
        self._client_left(req, ctl.open(req["request_id"], req["question"], req["meta"], req["tags"]), ctl, 0, 0)

    def _failed_request(self, req, sess, ctl, pos: int, failure: UpstreamFailure, probe_tokens: int) -> None:
        """A request the upstream failed, in the server's log and the decision log: the error (the replica's URL
        without credentials) and the request's final record, ``cause: upstream_failed`` (the monitor and
        check-log leave it out of the preset's figures)."""
        logger.warning("request %s: the upstream failed: %s", req["request_id"], failure)
        ctl.log.write({"type": "error", "request": req["request_id"],       # stamped with the deciding version
                       "status": failure.status, "error": str(failure)})
        self._ended(req, sess, ctl, pos, "upstream_failed", probe_tokens)

    def _rejected(self, req, sess, ctl, n: int, e: UpstreamRejected, probe_tokens: int) -> None:
        """A request the upstream refused, in the decision log: the error (status, message) and its final record,
        ``cause: upstream_rejected`` (the monitor leaves it out of the preset's figures)."""
        logger.info("request %s: the upstream refused it: %s", req["request_id"], e)
        ctl.log.write({"type": "error", "request": req["request_id"],
                       "status": e.status, "error": str(e)[:500]})
        self._ended(req, sess, ctl, n, "upstream_rejected", probe_tokens)

    async def _answer_after_failure(self, req, ids, cfg, sess, ctl, error) -> tuple[str, str, int]:
        """``--on-upstream-error answer``: the trial answer at the last token the failed upstream wrote, probed on
        a replica that is up; when none answers, the latest trial answer this request was probed for. The
        request ends there as a stop (``cause``: ``upstream_error``); with no trial answer at all the error
        stands."""
        eng, pos = self.engine, len(ids)
        try:
            pr = (await eng._retrying(lambda rr: eng._probe(rr, req["ids"] + ids, self.cue_ids, cfg),
                                      "the answer after an upstream failure", "nothing"))[0]
            sess.checkpoint(pos, pr.raw or None, pr.signals(), answer_tokens=len(pr.tokens),
                            probe_tokens=pr.probe_tokens, kind="interval", answer_type=ctl.answer_type)
            answer, where, spent = pr.raw, "probed", pr.probe_tokens
        except (ReplicaFailed, StoplineError):
            known = [j for j, a in enumerate(sess.history["answer_raw"]) if a]
            if not known:
                raise error from None
            j = known[-1]
            answer, where, pos, spent = sess.history["answer_raw"][j], "last_probed", sess.history["pos"][j], 0
            # the latest answer stands in for the position the stream reached
            sess.checkpoint(len(ids), answer, None, answer_tokens=sess.history["answer_tokens"][j],
                            kind="interval", answer_type=ctl.answer_type)
        j = sess.n - 1
        sess.stopped = Decision(True, answer, j, len(ids), "upstream_error")
        ctl.log.write({"type": "upstream_error", "request": req["request_id"],
                       "pos": len(ids), "answer_from": where, "answer_pos": pos, "error": str(error)[:300]})
        self.metrics.upstream_answers.inc()
        return answer or "", "upstream_error", spent

    async def _on_stop(self, r, req, kept_ids, answer, cfg) -> str:
        """The text after a stop: the cue, an answer and the box's closing brace. ``continue``: the model's own
        answer section, up to the brace that closes the box (braces inside it balanced, as a probe's answer),
        its line's end or the client's stop sequences."""
        if self.opt.on_stop == "continue":
            prompt = req["ids"] + kept_ids + self.cue_ids
            room = self.opt.continue_tokens if r.max_model_len is None else min(self.opt.continue_tokens,
                                                                                  r.max_model_len - len(prompt))
            if room >= 1:                   # within the model's context (an upstream 400 otherwise)
                out = await self.engine._post(r, "/completions", {
                    "model": self.engine.model, "prompt": prompt, "max_tokens": room, "temperature": 0,
                    "stop": ["\n", *req["sampling"].get("stop", [])]})    # the model's writing: the client's stops too
                text = first_choice(r, out).get("text")
                if not isinstance(text, str):
                    raise ReplicaFailed(r, "a completion whose text is not a string")
                end = closed_box_end(text, 0)
                return self.cue + (text[:end - 1] if end else text) + "}"
            if answer is None:              # no room left: the trial answer (a budget has none: probed now, within it)
                answer = (await self.engine._probe(r, req["ids"] + kept_ids, self.cue_ids, cfg))[0].raw
        return self.cue + (answer or "") + "}"


class Stops:
    """The client's stop sequences on the upstream's text. They go to the upstream with vLLM's
    ``include_stop_str_in_output``, so that each chunk's text is its own tokens' text (as without them); the
    gateway then finds where the first one begins (the chunk that completes it is the upstream's last), keeps
    the text from there from the client, and holds back the last characters of released text while they may
    still begin one."""

    def __init__(self, stops: list[str] | None):
        self.stops = stops or []
        self.hold = max(map(len, self.stops)) - 1 if self.stops else 0
        self.texts: list[str] = []          # every chunk's text, in order
        self.marks: list[tuple[int, int]] = []      # (its first token, its first character), per chunk
        self.got, self.cut = 0, None        # characters received; where the stop sequence begins, once known
        self.unsent, self.sent = "", 0      # released text not yet sent; characters sent

    def received(self, start: int, text: str) -> int | None:
        """A chunk's text (its first token at ``start``). When it completes a stop sequence: the first token of
        the chunk where that sequence begins (a checkpoint past it would read text the client never gets)."""
        if not self.stops:
            return None
        self.marks.append((start, self.got))
        self.texts.append(text)
        recent = self._recent()
        window, base = recent + text, self.got - len(recent)
        self.got += len(text)
        if self.cut is not None:
            return None
        ends = [(i + len(s), i) for s in self.stops if (i := window.find(s)) >= 0]
        if not ends:
            return None
        self.cut = base + min(ends)[1]       # the one that ends first (vLLM's rule; a tie: the first listed)
        return max(t for t, c in self.marks if c <= self.cut)

    def _recent(self) -> str:
        """The ``hold`` characters received before the latest chunk."""
        out, k = "", len(self.texts) - 2
        while len(out) < self.hold and k >= 0:
            out, k = self.texts[k] + out, k - 1
        return out[-self.hold:] if self.hold else ""

    def release(self, text: str) -> None:
        self.unsent += text

    def sendable(self, final: bool) -> str:
        """Released text the client may have now: never from the stop sequence on, nor, while more may come, the
        last characters that may begin one."""
        n = len(self.unsent) - (0 if final or self.cut is not None else self.hold)
        if self.cut is not None:
            n = min(n, self.cut - self.sent)
        out, self.unsent = self.unsent[:max(0, n)], self.unsent[max(0, n):]
        self.sent += len(out)
        return out

    def flush(self) -> str:
        """All released text (the response stops before any stop sequence completed)."""
        out, self.unsent = self.unsent, ""
        self.sent += len(out)
        return out

    def text(self) -> str:
        """The generation's text as the client gets it: up to the stop sequence."""
        return "".join(self.texts)[:self.cut]


def read_preset(arg: str) -> tuple[Path | None, str]:
    """(its file, its text) for ``--preset``: a preset file, or (None, the text) for a link (``sl1.…``, or the
    dashboard URL carrying it) or preset JSON. A file that is not there or cannot be read is a PresetError naming
    it."""
    from analysis.presets.schema import is_link
    path = Path(arg) if len(arg) < 4096 and "\n" not in arg else None
    try:
        is_file = path is not None and path.is_file()
    except OSError:                             # a name the system refuses (a long link): not a file
        path, is_file = None, False
    if not is_file:
        if arg.strip().startswith("{") or is_link(arg):
            return None, arg
        raise PresetError("no such preset file" if path is None or not path.exists() else "not a file",
                          file=arg, hint="--preset names a preset file, or gives the preset itself: its link "
                                         "(the Presets page's shareable link, or its sl1.… code) or its JSON")
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PresetError("not UTF-8 text", file=arg) from None
    except OSError as e:
        raise PresetError(f"cannot be read ({e.strerror or e})", file=arg) from None


def calibration_of(preset, run: str | None = None, db: str | None = None) -> dict | None:
    """The calibration a gateway's log names, ``{"db": PATH, "run": RUN_ID}`` as serve-demo writes it: ``run``
    (default: the run the preset's certificate was made on) in the store ``db`` (default: $STOPLINE_DB or
    data/stopline.duckdb, else the bundled demo store), checked to be there. A run or store given that is not
    there is a StoplineError; a default that is not, a warning and no calibration (the monitor is then told
    with --run and --db)."""
    from analysis.core.store import DEMO_DB, portable_path, Store, resolve_db_path
    certified = (preset.certificate or {}).get("run")
    default = certified if isinstance(certified, str) and certified not in ("", "explore") else None
    if db and not (run or default):
        raise StoplineError("--db names the store of the calibration run: give the run too (--calibration-run RUN)")
    if not (run or default):
        return None
    path = db or resolve_db_path()
    if not db and not Path(path).exists() and Path(DEMO_DB).exists():
        path = DEMO_DB
    try:
        store = Store(path, read_only=True)
        found = store.run(run or default)
    except StoplineError as e:
        if run or db:
            raise StoplineError(f"the calibration run {run or default!r} cannot be found here ({e.message})", file=path,
                                hint="--calibration-run names a run of the store --db names (`python -m analysis "
                                     "runs --db PATH` lists them)") from None
        logger.warning("the preset was certified on run %s, which is not in %s (%s): the log names no calibration "
                       "run; give --calibration-run and --db", default, path, e.message)
        return None
    return {"db": portable_path(store.path), "run": found["id"]}


def question_wrappers(tok, opt: Options) -> list[tuple[str, str]]:
    """What the calibration run's prompt puts around a question: (before, after) in the user message its
    template makes, and in the whole prompt the chat template makes of it (a /v1/completions prompt)."""
    template = opt.prompt_template or PROMPTS.get(opt.answer_type, PROMPTS["number"])
    mark = "\x00question\x00"
    user = template.format(question=mark)
    out = [tuple(user.split(mark, 1))]
    if getattr(tok, "chat_template", None):
        try:
            whole = build_prompt(tok, mark, GenConfig(prompt_template=template, system=opt.system))
            out.append(tuple(whole.split(mark, 1)))
        except Exception:       # noqa: BLE001 - a template that cannot render a bare message: the user message's alone
            pass
    return [w for w in out if len(w) == 2]


def bare_question(text: str, wrappers: list[tuple[str, str]]) -> str:
    """The question in a request's text, as the replay measures ``question_chars`` (the dataset's question): the
    run's prompt template taken off when the text is in it, else the text as it is."""
    for before, after in sorted(wrappers, key=lambda w: -len(w[0]) - len(w[1])):
        if len(text) >= len(before) + len(after) and text.startswith(before) and text.endswith(after):
            return text[len(before):len(text) - len(after)]
    return text


def calibration_generation(calibration: dict | None) -> dict:
    """The calibration run's generation settings, as the gateway's options name them (answer type, checkpoint
    schedule, cue, answer length, prompt template, system message): what the replay's decisions were made on.
    {} without a calibration run, or for a run that does not record them (an import)."""
    if not calibration:
        return {}
    from analysis.core.store import Store
    run = Store(calibration["db"], read_only=True).run(calibration["run"])
    gen = run["config"].get("gen") or {}
    out = {"answer_type": run.get("answer_type")}
    out.update({k: gen.get(k) for k in ("every", "steps", "transitions", "cue", "max_answer_tokens",
                                        "prompt_template", "system")})
    return {k: v for k, v in out.items() if v is not None}


def options_for(given: dict, run: dict) -> tuple[dict, list[str]]:
    """The gateway's generation options: each as given (``given``: None where not), else the calibration run's
    (``calibration_generation``), else the default; and a note for each given that differs from the run's (its
    checkpoints, cue or answers are then not those the replay decided on)."""
    out = {k: v for k, v in run.items() if k not in given}     # what no option names: the run's (its template)
    notes = []
    for k, v in given.items():
        if v is None:
            if k in run:
                out[k] = run[k]
            continue
        out[k] = v
        if k in run and run[k] != v:
            notes.append(f"{k} {v!r} differs from the calibration run's {run[k]!r}: live checkpoints, probes or "
                         "answers are not those the replay decided on")
    return out, notes


def from_headers(headers) -> dict:
    """Stopline's request fields from HTTP headers (names case-insensitive)."""
    h = {k.lower(): v for k, v in headers.items()}
    out = {}
    for name, key in (("x-stopline-tags", "tags"), ("x-stopline-meta", "meta")):
        if name in h:
            try:
                out[key] = strict_json(h[name])
            except ValueError as e:
                raise BadRequest(f"the {name} header must be a JSON object ({e})", name) from None
            except RecursionError:
                raise BadRequest(f"the {name} header nests too deeply (at most {MAX_DEPTH} levels)", name) from None
            if depth(out[key]) > MAX_DEPTH:
                raise BadRequest(f"the {name} header nests deeper than {MAX_DEPTH} levels", name)
    if "x-request-id" in h:
        out["request_id"] = h["x-request-id"]
    return out


def depth(value, stop: int = MAX_DEPTH + 1) -> int:
    """How deeply a JSON value nests (a scalar: 0, ``{}`` or ``{"a": 1}``: 1), counted level by level, without
    recursion, up to ``stop``."""
    level, layer = 0, [value]
    while level < stop:
        boxes = [x for x in layer if isinstance(x, (dict, list))]
        if not boxes:
            break
        level += 1
        layer = [v for b in boxes for v in (b.values() if isinstance(b, dict) else b)]
    return level


async def connect(engine: OpenAIEngine) -> dict:
    """Check the upstream before serving (its connections open): its model named (the first it lists, unless
    given), every replica reachable, serving it, with log-probabilities and token ids, tokenising as the
    gateway's tokenizer (``OpenAIEngine.check``). A StoplineError names the URL and what failed."""
    try:
        if not engine.model:
            problems = []
            for r in engine.replicas:
                try:
                    listed = (await engine.get_json(r, "/models")).get("data")
                    break
                except (ReplicaFailed, StoplineError) as e:
                    problems.append(str(e))
            else:
                raise StoplineError("no upstream lists its models (GET /v1/models): " + "; ".join(problems),
                                    hint=UPSTREAM_HINT)
            if not isinstance(listed, list) or not listed or not isinstance(listed[0], dict) or not listed[0].get("id"):
                raise StoplineError(f"the server at {r.shown} lists no model (GET /v1/models)", hint="give --model")
            engine.model = listed[0]["id"]
        return await engine.check()
    except StoplineError as e:      # the engine's hints name the run command's options; the gateway's are these
        hint = e.hint and e.hint.replace("or check --base-url", "or check --upstream").replace(
            "give --api-key", "give --upstream-key")
        raise StoplineError(e.message, hint=hint) from None


def bind(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound before anything is printed or written: a port in use is said at once."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)        # (as uvicorn binds)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise StoplineError(f"port {port} on {host} is in use (another gateway or server listens there)",
                                hint="give another --port, or stop what uses it") from None
        raise StoplineError(f"cannot listen on {host}:{port} ({e.strerror or e})", hint="check --host and --port") \
            from None
    return sock


def check_keys(api_key: str | None, admin_key: str | None) -> None:
    """The admin key must be a key of its own: with the clients' key any client could replace the preset."""
    if admin_key and admin_key == api_key:
        raise StoplineError("the admin key is the clients' API key: any client could replace the preset",
                            hint="give --admin-key (or $STOPLINE_ADMIN_KEY) a key of its own")


def check_key(expected: str | None, header: str | None) -> bool:
    """Bearer-token check in constant time (no key configured: open, as on loopback)."""
    if not expected:
        return True
    got = (header or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(got.encode(), expected.encode())


def check_bind(host: str, api_key: str | None) -> None:
    if host not in LOOPBACK and not api_key:
        raise StoplineError(f"serving on {host} (beyond this machine) needs an API key",
                            hint="give --api-key (or $STOPLINE_GATEWAY_KEY), or keep the default --host 127.0.0.1")
