"""The gateway's HTTP face (FastAPI on uvicorn): the OpenAI routes, health, metrics and the admin reload. The
decisions are ``gateway.Gateway``'s.

Who may call what: ``/health`` anyone; ``/admin/*`` only with the admin key (``--admin-key``; without one the
admin routes are off); everything else with the clients' API key when the gateway has one. A request body is
read as it arrives and refused with 413 once it passes ``--max-body-kb``, whether or not it says its length.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from analysis.backend.engine_openai import ReplicaFailed
from analysis.core.errors import PresetError, StoplineError, brief
from analysis.core.sharing import HOSTS_ENV, host_allowed, is_local
from analysis.production.gateway import (BadRequest, CLIENT_LEFT, Gateway, UpstreamFailure, UpstreamRejected,
                                         check_key, connect, logger, upstream_failure)
from analysis.production.gateway_request import strict_json


def error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="Stopline gateway", docs_url=None, redoc_url=None, openapi_url=None)

    @app.on_event("startup")
    async def _start():
        await gw.engine.__aenter__()
        if not gw.engine.info:          # not checked before (serve checks it before anything is written)
            await connect(gw.engine)

    @app.on_event("shutdown")
    async def _stop():
        await gw.engine.__aexit__(None, None, None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path, given = request.url.path, request.headers.get("authorization")
        # on this machine only: under this machine's names (a page elsewhere whose name resolves to 127.0.0.1,
        # DNS rebinding, is refused), and without a key, not from web pages (a page the user visits could
        # otherwise send it requests: a browser says where they come from in Origin; SDKs send none)
        host = request.headers.get("host")
        listen = gw.listen if gw.listen is not None else (request.scope.get("server") or (None,))[0]
        if not host_allowed(host, listen):
            return error(403, f"this gateway listens on this machine only and answers to its names (localhost, a "
                              f"loopback address) or those in {HOSTS_ENV}, not {brief(host)}", kind="permission_error")
        if not gw.api_key and request.headers.get("origin") and is_local(listen):
            return error(403, "a request from a web page (it sent an Origin header) needs the gateway's --api-key: "
                              "without a key, any page the user visits could use this gateway",
                         kind="permission_error")
        if path.startswith("/admin/"):
            if not gw.admin_key:
                return error(403, "the admin endpoint is off: start the gateway with --admin-key (or "
                                  "$STOPLINE_ADMIN_KEY) to use it", kind="permission_error")
            if not check_key(gw.admin_key, given):
                return error(401, "the admin key is required (Authorization: Bearer ADMIN_KEY); the clients' API "
                                  "key is not it", kind="authentication_error")
        elif path != "/health" and not check_key(gw.api_key, given):
            return error(401, "a valid API key is required (Authorization: Bearer KEY)", kind="authentication_error")
        n = request.headers.get("content-length")
        if n is not None and (not n.isdigit() or int(n) > gw.opt.max_body):
            return error(413, f"the request body is larger than {gw.opt.max_body} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "preset_version": gw.version}

    @app.get("/metrics")
    async def metrics():
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        """The upstream's list, from the first replica that answers (replicas set aside tried last)."""
        now = time.monotonic()
        failure = None
        for r in sorted(gw.engine.replicas, key=lambda r: r.down_until > now):
            try:
                listed = await gw.engine.get_json(r, "/models")
                # the model this gateway serves (the others get 404 here), without where the upstream keeps it
                cards = [{k: v for k, v in c.items() if k not in ("root", "parent", "permission")}
                         for c in listed.get("data") or [] if isinstance(c, dict) and c.get("id") == gw.engine.model]
                return {"object": "list", "data": cards}
            except (ReplicaFailed, StoplineError) as e:
                failure = upstream_failure(e, r, gw.opt.request_timeout)
                logger.warning("GET /v1/models: the upstream failed: %s", failure)
        return error(502, f"the upstream failed: {failure.public}", kind="upstream_error")

    @app.post("/admin/preset")
    async def admin_preset(request: Request):
        try:
            text = (await read_body(request, gw.opt.max_body)).decode()
            async with gw._reload_lock:            # off the event loop: it may open the calibration store
                changed = await asyncio.to_thread(gw.reload, text=text)
        except BadRequest as e:
            return error(e.status, str(e), e.param)
        except (PresetError, StoplineError, UnicodeDecodeError) as e:
            gw.metrics.reload_errors.inc()
            return error(400, f"preset refused, the current one ({gw.version}) stays: {e}", "preset")
        return {"preset_version": gw.version, "changed": changed}

    async def body_of(request: Request):
        raw = await read_body(request, gw.opt.max_body)
        try:
            return strict_json(raw)
        except ValueError as e:
            raise BadRequest(f"the body is not JSON ({e})") from None
        except RecursionError:
            raise BadRequest("the body nests too deeply to be read") from None

    async def serve(request: Request, chat: bool):
        endpoint = "chat" if chat else "completions"
        try:
            # the chat template and tokenizer run in a worker thread: the event loop keeps streaming meanwhile
            req = await asyncio.to_thread(gw.parse, await body_of(request), chat, dict(request.headers))
            gw.claim(req)
        except BadRequest as e:
            gw.metrics.requests.labels(endpoint, "bad_request").inc()
            return error(e.status, str(e), e.param)
        resp = None
        try:
            resp = await answer(request, req, chat, endpoint)
            return resp
        finally:        # its final record freed the id (gw.events); this, in case none was written
            if not isinstance(resp, StreamingResponse):      # (a stream's id: when it ends, Stream.settle)
                gw.release(req)

    async def answer(request: Request, req: dict, chat: bool, endpoint: str):
        """The response to a request claimed (``gw.claim``)."""
        rid = "chatcmpl-" if chat else "cmpl-"
        rid += uuid.uuid4().hex[:16]
        created = int(time.time())
        shape = Shape(chat, rid, created, gw.engine.model)
        if req["stream"]:
            s = Stream(gw, req, shape, endpoint)
            work = await unless_gone(request, s.start())
            if work.cancelled():        # (the decision log has its final record: gw.events wrote it)
                gw.metrics.requests.labels(endpoint, CLIENT_LEFT).inc()
                return Response(status_code=499)
            if isinstance(work.exception(), UpstreamRejected):      # before any chunk: with its status
                return rejected(work.exception(), endpoint)
            return StreamingResponse(s.chunks(), media_type="text/event-stream", background=BackgroundTask(s.settle))

        async def whole():
            text, info = [], None
            async for kind, v in gw.events(req):
                if kind == "text":
                    text.append(v)
                else:
                    info = v
            return "".join(text), info
        work = await unless_gone(request, whole())
        if work.cancelled():            # (the decision log has its final record: gw.events wrote it)
            gw.metrics.requests.labels(endpoint, CLIENT_LEFT).inc()
            return Response(status_code=499)
        try:
            text, info = work.result()
        except UpstreamRejected as e:
            return rejected(e, endpoint)
        except UpstreamFailure as e:
            gw.metrics.requests.labels(endpoint, "upstream_error").inc()
            return error(e.status, f"the upstream failed: {e.public}", kind="upstream_error")
        except Exception as e:          # our own failure: logged, and said as such
            gw.metrics.requests.labels(endpoint, "gateway_error").inc()
            internal(gw, req, e)
            return error(500, "the gateway failed on this request; its log says why", kind="server_error")
        gw.metrics.requests.labels(endpoint, outcome(info)).inc()
        return JSONResponse(shape.whole(text, info))

    def rejected(e: UpstreamRejected, endpoint: str) -> JSONResponse:
        gw.metrics.requests.labels(endpoint, "upstream_rejected").inc()
        return error(e.status, e.public, e.param)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await serve(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, chat=True)

    return app


def outcome(info: dict) -> str:
    if info.get("cause") == "upstream_error":
        return "upstream_error_answered"
    return "stopped" if info["stopped"] else "full"


async def read_body(request: Request, cap: int) -> bytes:
    """The request's body as it arrives, refused (413) as soon as it passes ``cap`` bytes: a body sent in chunks
    says no length beforehand, and is never held whole before its size is known."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > cap:
            raise BadRequest(f"the request body is larger than {cap} bytes (--max-body-kb)", status=413)
    return bytes(body)


async def unless_gone(request: Request, aw) -> asyncio.Future:
    """``aw`` run as a task, cancelled if the client leaves first (its upstream request and probes end then);
    returns the task, done or cancelled."""
    work = asyncio.ensure_future(aw)
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
    return work


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (its body already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def internal(gw: Gateway, req: dict, e: Exception) -> None:
    logger.error("request %s: the gateway failed", req["request_id"], exc_info=e)
    gw.log.write({"type": "error", "request": req["request_id"], "status": 500,
                  "preset_version": req.get("preset_version", gw.version),
                  "error": f"{type(e).__name__}: {str(e)[:300]}"})


class Shape:
    """OpenAI's response shapes, completions or chat, whole or as stream chunks."""

    def __init__(self, chat: bool, rid: str, created: int, model: str):
        self.chat, self.rid, self.created, self.model = chat, rid, created, model

    def _usage(self, info: dict) -> dict:
        """OpenAI's usage: the tokens of what the client receives (after a stop, the cue and the answer too; the
        ``stopline`` object's ``tokens_emitted`` is the replay's count: the stop's position plus the answer)."""
        return {"prompt_tokens": info["prompt_tokens"], "completion_tokens": info["completion_tokens"],
                "total_tokens": info["prompt_tokens"] + info["completion_tokens"]}

    @staticmethod
    def _stopline(info: dict) -> dict:
        return {k: v for k, v in info.items() if k != "completion_tokens"}      # (that one is the usage's)

    def whole(self, text: str, info: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": info["finish_reason"]}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": info["finish_reason"]}
        return {"id": self.rid, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self._usage(info),
                "stopline": self._stopline(info)}

    def chunk(self, text: str | None, info: dict | None = None, first: bool = False) -> str:
        if self.chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": info["finish_reason"] if info else None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None,
                      "finish_reason": info["finish_reason"] if info else None}
        d = {"id": self.rid, "object": "chat.completion.chunk" if self.chat else "text_completion",
             "created": self.created, "model": self.model, "choices": [choice]}
        if info:
            d["usage"], d["stopline"] = self._usage(info), self._stopline(info)
        return f"data: {json.dumps(d)}\n\n"


class Stream:
    """A streamed response (``chunks``), its request settled once however the stream ends (``settle``, the
    response's background task): its outcome counted, and a client that left before the end counted as
    ``client_disconnected``, with the request's final record in the decision log (``gw.events`` writes it when
    closed here; ``gw.abandoned`` when the stream never started)."""

    def __init__(self, gw: Gateway, req: dict, shape: Shape, endpoint: str):
        self.gw, self.req, self.shape, self.endpoint = gw, req, shape, endpoint
        self.events = gw.events(req)
        self.started = self.counted = self.primed = False
        self.first, self.failed = None, None        # the first event, or what the events raised instead

    async def start(self) -> None:
        """The first event, awaited before the response's status goes out: a request the upstream refuses (4xx)
        raises UpstreamRejected here, to be answered with its status as vLLM's own stream is; any other failure
        waits for ``chunks``, which says it as an error event."""
        self.primed = True
        try:
            self.first = await self.events.__anext__()
        except StopAsyncIteration:
            pass
        except UpstreamRejected:
            raise
        except Exception as e:
            self.failed = e

    async def _events(self):
        if self.failed is not None:
            raise self.failed
        if self.first is not None:
            yield self.first
        async for ev in self.events:
            yield ev

    def count(self, outcome: str) -> None:
        if not self.counted:
            self.counted = True
            self.gw.metrics.requests.labels(self.endpoint, outcome).inc()

    async def chunks(self):
        self.started, first = True, True
        try:
            async for kind, v in self._events():
                if kind == "text":
                    yield self.shape.chunk(v, first=first)
                    first = False
                else:
                    self.count(outcome(v))
                    yield self.shape.chunk(None, v)
        except UpstreamRejected as e:
            self.count("upstream_rejected")
            yield event_error(e.public, "invalid_request_error", e.status)
        except UpstreamFailure as e:
            self.count("upstream_error")
            yield event_error(f"the upstream failed: {e.public}", "upstream_error", e.status)
        except Exception as e:          # our own failure: logged, and the stream still ends as a stream
            self.count("gateway_error")
            internal(self.gw, self.req, e)
            yield event_error("the gateway failed on this request; its log says why", "server_error", 500)
        except (asyncio.CancelledError, GeneratorExit):       # the client left
            await self.settle()
            raise
        yield "data: [DONE]\n\n"

    async def settle(self) -> None:
        """After the stream, however it ended (a stream whose client left may stop at a chunk, unclosed, or never
        start): a request not yet counted is one whose client left."""
        if not self.started:
            self.started = True
            if not self.primed:                 # (a primed one's events write it when closed)
                self.gw.abandoned(self.req)
        self.count(CLIENT_LEFT)
        try:
            await self.events.aclose()          # the events' own end: their final record, the upstream cancelled
        finally:
            self.gw.release(self.req)


def event_error(message: str, kind: str, code: int) -> str:
    return f"data: {json.dumps({'error': {'message': message, 'type': kind, 'code': code}})}\n\n"
