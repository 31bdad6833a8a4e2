"""The gateway's HTTP face against peers that misbehave, over real HTTP: our FastAPI app on uvicorn, a client
that sends a body in chunks that never ends, and an upstream that is a tiny HTTP server written here. That
server answers the gateway's start-up checks as a server of the model would, and then sends what a broken
server sends (a stream line that is not JSON, a chunk that is not an object, a probe reply without choices, a
stream that never ends). What is tested is our handling of it: a clear error naming the problem, replicas
named by number toward clients and by URL without credentials in the log, the decision log's records, nothing
left waiting; also the admin key, the body cap, bounded nesting and the checked sampling fields. The gateway
in front of a real vLLM is tests/integration/test_gateway_vllm.py."""
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from analysis.backend.models import load_tokenizer
from analysis.core.errors import StoplineError
from analysis.presets.schema import from_dict
from analysis.production.monitor import monitor
from analysis.production.verify import check_decisions
from tests.helpers import serve_gateway

MODEL = "smollm2-135m-instruct"
NEVER = {"stopline_preset": 1, "name": "never", "setting": {"family": "budget", "params": {"B": 32768}}}
B32 = {"stopline_preset": 1, "name": "b32", "setting": {"family": "budget", "params": {"B": 32}}}
CONF = {"stopline_preset": 1, "name": "c", "setting": {"family": "confidence", "params": {"tau": 0.99}}}
UNSURE = {"stopline_preset": 1, "name": "u", "setting": {"family": "confidence", "params": {"tau": 0.999}}}
SMALL = {"every": 4, "steps": False, "transitions": False}          # a checkpoint every 4 tokens, nothing else


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


class Upstream:
    """A tiny HTTP server in a thread. GET /v1/models and a plain completion answer as a server of MODEL would,
    so that the gateway starts; a streamed completion sends ``ids`` one per chunk, and ``mode`` makes it (or the
    probes) misbehave. ``open_streams`` counts the streams the gateway still holds open."""

    def __init__(self, ids: list[int], texts: list[str], answer_id: int):
        self.ids, self.texts, self.answer_id = ids, texts, answer_id
        self.mode, self.open_streams, self.closed = "good", 0, False
        self.bodies: list[dict] = []         # the streamed completions' request bodies
        self.lock = threading.Lock()
        up = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != "/v1/models":
                    return self.send_error(404)
                self.reply({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.path != "/v1/completions":
                    return self.send_error(404)
                if body.get("stream"):
                    up.bodies.append(body)
                    if up.mode.startswith("answers "):          # e.g. "answers 422": the request refused
                        status = int(up.mode.split()[1])
                        return self.reply({"error": {"message": "max_tokens is too large for http://10.0.0.5:8000/v1",
                                                     "type": "BadRequestError", "param": "max_tokens",
                                                     "code": status}}, status)
                    return up.stream(self)
                if "stop" in body and up.mode == "probe without choices":
                    return self.reply({"object": "text_completion"})
                self.reply({"choices": [{"index": 0, "text": "4", "token_ids": [up.answer_id], "finish_reason": "stop",
                                         "logprobs": {"token_logprobs": [-0.01], "top_logprobs": [{"4": -0.01}]}}]})

            def reply(self, obj, status: int = 200):
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except OSError:          # the gateway cancelled the probe
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stream(self, h) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()
        with self.lock:
            self.open_streams += 1

        def send(line: str) -> None:
            h.wfile.write(line.encode() + b"\n\n")
            h.wfile.flush()
        try:
            if self.mode == "never ends":
                while not self.closed:
                    send(": still here")
                    time.sleep(0.05)
                return
            if self.mode == "trickles":          # tokens, one every 50 ms, until the gateway closes the stream
                while not self.closed:
                    for t, text in zip(self.ids, self.texts):
                        send("data: " + json.dumps({"choices": [{"index": 0, "text": text, "token_ids": [t]}]}))
                        time.sleep(0.05)
                return
            for t, text in zip(self.ids, self.texts):
                send("data: " + json.dumps({"choices": [{"index": 0, "text": text, "token_ids": [t]}]}))
            if self.mode == "not JSON":
                send('data: {"choices": [')
            elif self.mode == "not an object":
                send("data: [1, 2]")
            send("data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}))
            send("data: [DONE]")
        except OSError:              # the gateway closed the stream
            pass
        finally:
            with self.lock:
                self.open_streams -= 1

    def close(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


def counting(tok) -> Upstream:
    """An upstream that writes " one two … eight" and answers 4."""
    t = tok[0]
    ids = t(" one two three four five six seven eight", add_special_tokens=False)["input_ids"]
    return Upstream(ids, [t.decode([i]) for i in ids], t("4", add_special_tokens=False)["input_ids"][0])


@pytest.fixture(scope="module")
def upstream(tok):
    up = counting(tok)
    yield up
    up.close()


@pytest.fixture
def up(upstream):
    upstream.mode = "good"
    yield upstream
    upstream.mode = "good"


def ask(url: str, stream: bool = False, timeout: float = 30, headers=None, **body):
    """A chat request; (status, JSON body) or, streamed, (status, the data lines' payloads)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 8,
            "stream": stream, **body}
    if not stream:
        r = httpx.post(url + "/chat/completions", json=body, timeout=timeout, headers=headers)
        return r.status_code, r.json()
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=timeout, headers=headers) as r:
        return r.status_code, [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]


def records(folder, kind: str) -> list[dict]:
    return [rec for rec in map(json.loads, open(folder / "decisions.jsonl")) if rec["type"] == kind]


@pytest.mark.parametrize("mode,says", [("not JSON", "a line that is not JSON"),
                                       ("not an object", "a chunk that is not a completion chunk")])
def test_a_malformed_upstream_stream_ends_the_request_with_a_clear_502_not_a_hang(tok, up, tmp_path, mode, says):
    """Before, the gateway's producer died on the bad line and the request waited forever. Now: 502 (or an
    error event when streamed) naming the problem and the replica by number; the server's log names the URL,
    without the credentials it carries; the decision log has the request's error and final records, and the
    metrics the tokens the failed requests generated and probed (they were left out)."""
    up.mode = mode
    secret_url = f"http://alice:s3cret@127.0.0.1:{up.port}/v1"
    with serve_gateway(secret_url, tok, tmp_path, UNSURE, MODEL, **SMALL) as (gw, url):
        status, out = ask(url, stopline={"request_id": "whole"})
        assert status == 502 and out["error"]["type"] == "upstream_error"
        message = out["error"]["message"]
        assert says in message and "replica 1 of 1" in message, message
        assert "127.0.0.1" not in message and "s3cret" not in message and "alice" not in message
        status, lines = ask(url, stream=True, stopline={"request_id": "streamed"})
        assert status == 200 and lines[-1] == "[DONE]"
        err = json.loads(lines[-2])["error"]
        assert err["code"] == 502 and says in err["message"] and "127.0.0.1" not in err["message"]
        assert all("choices" in json.loads(x) for x in lines[:-2])      # the tokens before the bad line came through
        errors = records(tmp_path, "error")
        assert [e["request"] for e in errors] == ["whole", "streamed"]
        assert all(f"http://127.0.0.1:{up.port}/v1" in e["error"] and "s3cret" not in e["error"] for e in errors)
        finals = records(tmp_path, "final")
        assert [(f["request"], f["cause"], f["full_length"]) for f in finals] == [
            ("whole", "upstream_failed", False), ("streamed", "upstream_failed", False)]
        res = check_decisions(str(tmp_path / "decisions.jsonl"))       # not replayed as the preset's decisions
        assert res["ended_by_upstream"] == 2 and res["n"] == 0, res
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'stopline_requests_total{endpoint="chat",outcome="upstream_error"} 2.0' in metrics
        emitted, probed = sum(f["tokens_emitted"] for f in finals), sum(c["probe_tokens"] for c in records(
            tmp_path, "checkpoint"))
        assert emitted == 2 * len(up.ids) and f"stopline_tokens_emitted_total {emitted:.1f}" in metrics, metrics
        assert f"stopline_probe_tokens_total {probed:.1f}" in metrics, (probed, metrics)
        assert "s3cret" not in "".join(open(tmp_path / "decisions.jsonl"))
    assert up.open_streams == 0


def test_a_probe_reply_without_choices_is_a_502_that_names_it(tok, up, tmp_path):
    up.mode = "probe without choices"
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, CONF, MODEL, **SMALL) as (gw, url):
        status, out = ask(url)
        assert status == 502, out
        assert "replica 1 of 1: a probe's reply cannot be read" in out["error"]["message"]
        assert "no choices" in out["error"]["message"]
        assert records(tmp_path, "final")[0]["cause"] == "upstream_failed"
        up.mode = "good"                                # the same gateway, a well-formed upstream: answered
        status, out = ask(url)
        assert status == 200 and out["stopline"]["probe_tokens"] > 0, out


def test_an_upstream_that_never_finishes_meets_the_deadline(tok, up, tmp_path):
    """The stream sends only keep-alive comments: no read timeout ever fires, the request's deadline does."""
    up.mode = "never ends"
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, request_timeout=1.0,
                       **SMALL) as (gw, url):
        t0 = time.monotonic()
        status, out = ask(url)
        assert status == 504 and "deadline of 1 s" in out["error"]["message"], out
        status, lines = ask(url, stream=True)
        assert json.loads(lines[-2])["error"]["code"] == 504 and lines[-1] == "[DONE]"
        assert time.monotonic() - t0 < 10
        assert [e["status"] for e in records(tmp_path, "error")] == [504, 504]
        assert until(lambda: up.open_streams == 0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_cancels_its_upstream_request_and_the_log_ends_the_request(tok, up, tmp_path, stream):
    """The client leaves mid-request: a whole response's client gives up waiting, a stream's client reads six
    chunks and closes. Its upstream request and probes are cancelled (before, a stream's outlived its client: the
    stream's task is cancelled again at every await once its client has gone, which cut the closing of the
    upstream connection short). Before, the decision log got no final record, so the monitor never saw the
    request; now it gets one, cause client_disconnected, with what was done by then (tokens, probes, preset
    version), the requests counter has its outcome, and the monitor counts it apart."""
    up.mode = "trickles"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 100_000,
            "stream": stream, "stopline": {"request_id": "gone"}}
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, UNSURE, MODEL, **SMALL) as (gw, url):
        if stream:
            with httpx.stream("POST", url + "/chat/completions", json=body, timeout=30) as r:
                got = 0
                for ln in r.iter_lines():
                    got += ln.startswith("data: ")
                    if got == 6:
                        break                                            # and closes its connection
            assert got == 6
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/chat/completions", json=body, timeout=1.0)      # gives up, and closes
        assert until(lambda: up.open_streams == 0), "the upstream stream outlived its client"
        assert until(lambda: records(tmp_path, "final")), "no final record for the request its client left"
        metrics = url.removesuffix("/v1") + "/metrics"
        counted = 'stopline_requests_total{endpoint="chat",outcome="client_disconnected"} 1.0'
        assert until(lambda: counted in httpx.get(metrics).text), httpx.get(metrics).text
        finals = records(tmp_path, "final")
        assert len(finals) == 1, finals
        fin = finals[0]
        assert fin["request"] == "gone" and fin["cause"] == "client_disconnected", fin
        assert not fin["stopped"] and not fin["full_length"] and fin["preset_version"] == gw.version, fin
        assert fin["tokens_emitted"] >= 6 and fin["stop_pos"] == fin["tokens_emitted"], fin     # what was done by then
        cks = records(tmp_path, "checkpoint")
        assert fin["n_checkpoints"] == len(cks) >= 1 and all(c["probe_tokens"] > 0 for c in cks), (fin, cks)
        assert "stopline_early_stops_total{" not in httpx.get(metrics).text
        log = str(tmp_path / "decisions.jsonl")
        res = monitor(log, preset=from_dict(UNSURE))           # counted apart, not in the preset's figures
        assert res["n_requests"] == 1 and res["cut_by_client"] == 1 and res["observed"]["n"] == 0, res
        res = check_decisions(log)                             # its decisions before the cut were the preset's
        assert res["agreement"] == 1.0 and res["n"] == 1 and res["ended_by_upstream"] == 0, res


def test_a_stream_whose_client_left_is_settled_once_however_it_stopped(tok, up, tmp_path):
    """Two ways a stream can stop for a client that left other than a cancel inside the request, met by the
    response's background task (``Stream.settle``): stopped at a chunk and left unclosed (the disconnect met the
    chunk's send), and never started (the client left before the first chunk). Each gets one final record
    (client_disconnected) and one count, and the first its upstream stream closed."""
    import asyncio
    from analysis.core.aio import run_sync
    from analysis.production.gateway import Gateway, Options
    from analysis.production.gateway_app import Shape, Stream
    up.mode = "trickles"
    (tmp_path / "preset.json").write_text(json.dumps(UNSURE))
    t, kind, eos = tok
    gw = Gateway([f"http://127.0.0.1:{up.port}/v1"], str(tmp_path / "preset.json"), t, eos, kind,
                 log_path=str(tmp_path / "decisions.jsonl"), model=MODEL, options=Options(**SMALL))

    def stream(rid: str) -> Stream:
        req = gw.parse({"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 100_000,
                        "stream": True, "stopline": {"request_id": rid}}, chat=True)
        return Stream(gw, req, Shape(True, rid, 0, MODEL), "chat")

    async def run():
        await gw.engine.__aenter__()
        try:
            s = stream("cut")
            chunks = s.chunks()
            for _ in range(6):
                await chunks.__anext__()
            await s.settle()
            t0 = time.monotonic()
            while up.open_streams and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            assert up.open_streams == 0, "the upstream stream outlived its client"
            await chunks.aclose()                                   # closed at last: nothing more
            await stream("never").settle()
        finally:
            await gw.engine.__aexit__(None, None, None)
    run_sync(run())          # (Playwright's sync API may run a loop in this thread: the suite's browser tests)
    finals = records(tmp_path, "final")
    assert [(f["request"], f["cause"], f["stopped"], f["full_length"]) for f in finals] == [
        ("cut", "client_disconnected", False, False), ("never", "client_disconnected", False, False)], finals
    assert finals[0]["tokens_emitted"] >= 6 and finals[1]["tokens_emitted"] == finals[1]["n_checkpoints"] == 0
    assert all(f["preset_version"] == gw.version for f in finals)
    assert 'stopline_requests_total{endpoint="chat",outcome="client_disconnected"} 2.0' in gw.metrics.render().decode()


def test_a_request_id_still_in_flight_is_refused_with_409_and_is_free_again_once_its_request_ended(tok, up,
                                                                                                  tmp_path):
    """The decision log names requests by id, and the monitor refuses a log in which two requests of one id run at
    once (it could not tell their records apart). Before, the gateway took a second request under an id still in
    flight, and its own log became one the monitor could not read. Now the second gets 409 naming the field, and
    the id is free again once its request has ended, however it ended (streamed, whole, its client gone)."""
    up.mode = "trickles"
    dup = {"stopline": {"request_id": "dup"}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 100_000, **dup}
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            assert next(ln for ln in lines if ln.startswith("data: "))           # in flight
            for stream in (False, True):
                again = httpx.post(url + "/chat/completions", json={**body, "stream": stream}, timeout=30)
                err = again.json()["error"]
                assert again.status_code == 409 and err["param"] == "stopline.request_id", again.text
                assert "'dup' is still in flight" in err["message"], err
            assert list(gw.in_flight) == ["dup"]
        assert until(lambda: not gw.in_flight), gw.in_flight          # its client closed the stream: free again
        up.mode = "good"
        assert ask(url, **dup)[0] == 200 and not gw.in_flight       # freed before the client hears the end
        up.mode = "trickles"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/chat/completions", json={**body, "stream": False}, timeout=1.0)   # gives up
        assert until(lambda: not gw.in_flight), gw.in_flight
        up.mode = "good"
        assert ask(url, stream=True, **dup)[0] == 200 and not gw.in_flight
        m = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'stopline_requests_total{endpoint="chat",outcome="bad_request"} 2.0' in m
    finals = records(tmp_path, "final")
    assert [(f["request"], f.get("cause")) for f in finals] == [
        ("dup", "client_disconnected"), ("dup", None), ("dup", "client_disconnected"), ("dup", None)], finals
    res = monitor(str(tmp_path / "decisions.jsonl"), preset=from_dict(NEVER))     # its own log stays readable
    assert res["n_requests"] == 4 and res["cut_by_client"] == 2, res


def until(cond, seconds: float = 10) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > seconds:
            return False
        time.sleep(0.05)
    return True


def endless_chunked_post(url: str, path: str, headers: dict, most: int = 64 << 20) -> tuple[int, int, dict]:
    """POST a body in 4 KiB chunks (Transfer-Encoding: chunked, no length) that never ends, until the gateway
    answers or ``most`` bytes are sent. Returns (status, bytes sent by then, the answer's JSON)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, "Content-Type": "application/json",
                                                  "Transfer-Encoding": "chunked", **headers}.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
    sent, piece = 0, b"1000\r\n" + b"[" * 4096 + b"\r\n"
    with sock:
        while sent < most and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(piece)
            except OSError:
                break
            sent += 4096
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                answer.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0]):
            more = sock.recv(65536)
            assert more, f"the gateway closed without an answer after {sent} bytes"
            answer += more
    status = int(answer.split(b" ", 2)[1])
    return status, sent, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_chunked_body_is_refused_once_it_passes_the_cap_not_after_it_ends(tok, up, tmp_path):
    """Before, a body without a content-length was read whole, however large, before its size was checked
    (a 300 MB one took 1 GB). Now it is counted as it arrives: 413 while the client is still sending."""
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, admin_key="adm",
                       max_body=64 << 10, **SMALL) as (gw, url):
        root = url.removesuffix("/v1")
        for path, headers in (("/v1/chat/completions", {}), ("/v1/completions", {}),
                              ("/admin/preset", {"Authorization": "Bearer adm"})):
            status, sent, out = endless_chunked_post(root, path, headers)
            assert status == 413 and "larger than 65536 bytes" in out["error"]["message"], (path, out)
            assert sent < 8 << 20, f"{path}: {sent} bytes were taken before the 413"
        r = httpx.post(url + "/completions", content=b"x" * (70 << 10), headers={"content-type": "application/json"})
        assert r.status_code == 413                                    # a declared length: refused before reading
        status, out = ask(url)
        assert status == 200                                           # and the gateway serves on


def test_the_admin_endpoint_needs_its_own_key_and_is_off_without_one(tok, up, tmp_path, cli):
    upstream = f"http://127.0.0.1:{up.port}/v1"
    client, admin = {"Authorization": "Bearer k3y"}, {"Authorization": "Bearer 4dm1n"}
    (tmp_path / "a").mkdir()
    with serve_gateway(upstream, tok, tmp_path / "a", NEVER, MODEL, api_key="k3y", admin_key="4dm1n",
                       **SMALL) as (gw, url):
        admin_url, before = url.removesuffix("/v1") + "/admin/preset", gw.version
        r = httpx.post(admin_url, content=json.dumps(B32), headers=client)
        assert r.status_code == 401 and "admin key" in r.json()["error"]["message"] and gw.version == before
        assert httpx.post(admin_url, content=json.dumps(B32)).status_code == 401
        r = httpx.post(admin_url, content=json.dumps(B32), headers=admin)
        assert r.status_code == 200 and r.json()["changed"] and gw.version != before
        assert ask(url, headers=admin)[0] == 401                       # the admin key is not a client's key
        assert ask(url, headers=client)[0] == 200
    (tmp_path / "b").mkdir()
    with serve_gateway(upstream, tok, tmp_path / "b", NEVER, MODEL, api_key="k3y", **SMALL) as (gw, url):
        r = httpx.post(url.removesuffix("/v1") + "/admin/preset", content=json.dumps(B32), headers=client)
        assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]
    with pytest.raises(StoplineError, match="admin key is the clients' API key"):
        serve_gateway(upstream, tok, tmp_path / "b", NEVER, MODEL, api_key="same", admin_key="same").__enter__()
    code, _, err = cli("serve", "--upstream", upstream, "--preset", tmp_path / "b" / "preset.json",
                       "--tokenizer", MODEL, "--api-key", "same", "--admin-key", "same")
    assert code == 2 and "admin key is the clients' API key" in err


def test_deep_nesting_and_bad_sampling_fields_get_400_naming_the_field(tok, up, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, max_tokens_cap=64,
                       **SMALL) as (gw, url):
        status, out = ask(url, headers={"X-Stopline-Tags": deep})
        assert status == 400 and out["error"]["param"] == "x-stopline-tags" and "deep" in out["error"]["message"]
        status, out = ask(url, headers={"X-Stopline-Meta": json.dumps({"a": [[[[1]]]]})})
        assert status == 400 and out["error"]["param"] == "x-stopline-meta"
        status, out = ask(url, stopline={"meta": {"a": {"b": {"c": {"d": {"e": 1}}}}}})
        assert status == 400 and out["error"]["param"] == "stopline.meta" and "4 levels" in out["error"]["message"]
        r = httpx.post(url + "/completions", content=deep * 4, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nests too deeply" in r.json()["error"]["message"]
        # NaN and Infinity (Python's json writes them, from a pandas row say): refused now, not after the whole
        # generation (the decision log, strict JSON, refused the request's final record: a 500 and no record)
        body = '{"model": "%s", "prompt": "Count.", "max_tokens": 8, "stopline": {"meta": {"difficulty": %s}}}'
        for bad in ("NaN", "-Infinity", "1e999"):
            r = httpx.post(url + "/completions", content=body % (MODEL, bad), headers={"content-type": "application/json"})
            assert r.status_code == 400 and "the body is not JSON" in r.json()["error"]["message"], r.text
        status, out = ask(url, headers={"X-Stopline-Meta": '{"difficulty": NaN}'})
        assert status == 400 and out["error"]["param"] == "x-stopline-meta" and "NaN" in out["error"]["message"]
        for field, value, says in (("seed", "7", "seed must be an integer"), ("seed", 1.5, "seed must be an integer"),
                                   ("seed", True, "seed must be an integer"), ("seed", 2 ** 70, "64-bit"),
                                   ("max_tokens", "8", "positive integer"), ("max_tokens", 65, "at most 64"),
                                   ("max_completion_tokens", 1000, "at most 64 (this gateway's --max-tokens-cap)")):
            status, out = ask(url, **{field: value})
            assert status == 400 and out["error"]["param"] == field and says in out["error"]["message"], (field, out)
        no_max = {"model": MODEL, "messages": [{"role": "user", "content": "Count."}]}    # the cap applies, no 400
        r = httpx.post(url + "/chat/completions", json=no_max, timeout=30)
        assert r.status_code == 200, r.text
        status, out = ask(url, seed=7, max_tokens=64, stopline={"tags": {"priority": "low"},
                                                                 "meta": {"a": {"b": [1, 2]}}})
        assert status == 200 and out["stopline"]["tokens_emitted"] == 8, out


def test_chat_content_as_text_parts_is_read_and_other_parts_and_roles_get_400_naming_the_field(tok, up, tmp_path):
    """Before, content given as a list of parts (what many SDKs send) was refused, and any role was taken. Now
    text parts are joined with newlines (as vLLM joins them: the real-vLLM test compares the two), a developer
    message is the system's (as vLLM renders it), and other parts and roles get 400 naming the field."""
    t = tok[0]
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                 {"role": "user", "content": [{"type": "text", "text": "Count."}, {"type": "text", "text": "Now."}]}]
        status, out = ask(url, messages=parts)
        assert status == 200, out
        want = t(t.apply_chat_template([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Count.\nNow."}],
                                       add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        assert up.bodies[-1]["prompt"] == want["input_ids"]
        assert gw.parse({"messages": parts}, chat=True)["question"] == "Count.\nNow."     # routing reads it too
        history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."},
                   {"role": "assistant", "content": "1 2", "refusal": None, "tool_calls": []},  # a reply sent back
                   {"role": "tool", "content": "3", "tool_call_id": "c1"}, {"role": "user", "content": "More."}]
        assert ask(url, messages=history)[0] == 200
        for messages, param, says in (
                ([{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}],
                 "messages[0].content[1].type", "'image_url' part, which is not supported through the Stopline"),
                ([{"role": "user", "content": [{"text": "Hi"}]}], "messages[0].content[0]", "must be a text part"),
                ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text",
                 "must be a string"),
                ([{"role": "user", "content": {"type": "text"}}], "messages[0].content", "string or a list"),
                ([{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hi"}], "messages[1].role",
                 "must be one of system, user, assistant, developer, tool, not 'robot'"),
                ([{"content": "Hi"}], "messages[0].role", "not None"),
                ([{"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}], "messages[0].tool_calls",
                 "no tool or function calling"),
                ([], "messages", "non-empty list"), (["Hi"], "messages[0]", "{role, content} object")):
            status, out = ask(url, messages=messages)
            assert status == 400 and out["error"]["param"] == param and says in out["error"]["message"], (param, out)


def test_openai_fields_the_gateway_cannot_honour_or_does_not_know_get_400_never_silently_ignored(tok, up, tmp_path):
    """Before, logprobs, top_logprobs, stop, tools, response_format and any unknown field were dropped without a
    word. Now the fields it honours are forwarded to the upstream's generation (stop, with vLLM's
    include_stop_str_in_output so that the gateway sees where it stops; the penalties), the ones it cannot honour
    get 400 naming them unless at the value that asks for nothing, and unknown ones get 400 too (as OpenAI's own
    API answers an unrecognised argument)."""
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        status, out = ask(url, stop=["six", "\n\n"], presence_penalty=0.5, frequency_penalty=-1, user="u-7",
                          stream_options={"include_usage": True})
        assert status == 200, out
        sent = up.bodies[-1]
        assert sent["stop"] == ["six", "\n\n"] and sent["include_stop_str_in_output"] is True
        assert sent["presence_penalty"] == 0.5 and sent["frequency_penalty"] == -1 and "user" not in sent
        status, out = ask(url, stop="six")
        assert status == 200 and up.bodies[-1]["stop"] == ["six"]
        status, out = ask(url)                                  # nothing asked: nothing more sent
        assert status == 200 and not {"stop", "include_stop_str_in_output", "presence_penalty"} & set(up.bodies[-1])
        # what SDKs send by default asks for nothing: taken
        status, out = ask(url, logprobs=False, top_logprobs=0, n=1, tools=[], tool_choice="none", response_format={
            "type": "text"}, temperature=None, top_p=None, seed=None, stop=None, max_tokens=None, store=False)
        assert status == 200, out
        for field, value in (("logprobs", True), ("top_logprobs", 3), ("logit_bias", {"50256": -100}),
                             ("tools", [{"type": "function", "function": {"name": "f"}}]), ("tool_choice", "auto"),
                             ("response_format", {"type": "json_object"}), ("functions", [{"name": "f"}]),
                             ("echo", True), ("best_of", 3), ("suffix", "x"), ("reasoning_effort", "low")):
            status, out = ask(url, **{field: value})
            assert status == 400 and out["error"]["param"] == field, (field, out)
            assert f"{field} is not supported through the Stopline gateway" in out["error"]["message"], out
        status, out = ask(url, n=2)
        assert status == 400 and out["error"]["param"] == "n" and "not supported through the Stopline" in \
            out["error"]["message"]
        status, out = ask(url, top_k=5, min_p=0.05, repetition_penalty=1.1)    # the engines' own: forwarded
        assert status == 200 and {k: up.bodies[-1].get(k) for k in ("top_k", "min_p", "repetition_penalty")} == {
            "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1}, out
        status, out = ask(url, top_kk=5)
        assert status == 400 and out["error"]["param"] == "top_kk" and "unknown parameter 'top_kk'" in \
            out["error"]["message"]
        r = httpx.post(url + "/completions", json={"model": MODEL, "prompt": "Count.", "max_tokens": 4,
                                                   "logprobs": 0}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"     # 0 asks for one: refused
        r = httpx.post(url + "/completions", json={"model": MODEL, "prompt": "Count.", "messages": []}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        for field, value, says in (("stop", [""], "non-empty string"), ("stop", 5, "non-empty string"),
                                   ("stop", ["a"] * 17, "at most 16"), ("presence_penalty", 3, "between -2 and 2"),
                                   ("frequency_penalty", "1", "between -2 and 2"), ("top_k", 2.5, "whole number"),
                                   ("min_p", 2, "from 0 to 1"), ("repetition_penalty", 0, "positive number"),
                                   ("stream_options", {"include_usage": True, "x": 1}, "not supported")):
            status, out = ask(url, **{field: value})
            assert status == 400 and out["error"]["param"].startswith(field) and says in out["error"]["message"], \
                (field, out)
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'outcome="bad_request"' in metrics and 'outcome="full"} 5.0' in metrics


def test_usage_counts_what_the_client_receives_while_the_log_keeps_the_replays_count(tok, up, tmp_path):
    """Before, a stopped response's usage.completion_tokens was the stop's position plus the answer's tokens: the
    cue the client also received ("\\n\\nSo the final answer is \\boxed{") went uncounted. Now the usage counts
    the tokens of what the client receives (OpenAI's meaning), whole or streamed, while the stopline object's
    tokens_emitted, the decision log and the tokens_emitted counter keep the replay's count."""
    t = tok[0]
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, CONF, MODEL, **SMALL) as (gw, url):
        status, out = ask(url, max_tokens=64)
        info, text = out["stopline"], out["choices"][0]["message"]["content"]
        assert status == 200 and info["stopped"] and text.endswith(gw.cue + "4}"), out
        received = info["position"] + len(t(gw.cue + "4}", add_special_tokens=False)["input_ids"])
        assert out["usage"] == {"prompt_tokens": info["prompt_tokens"], "completion_tokens": received,
                                "total_tokens": info["prompt_tokens"] + received}, out
        assert info["tokens_emitted"] == info["position"] + 1 < received     # the stop plus the one answer token
        assert "completion_tokens" not in info
        status, lines = ask(url, stream=True, max_tokens=64)
        last = json.loads(lines[-2])
        assert last["usage"] == out["usage"] and last["stopline"]["tokens_emitted"] == info["tokens_emitted"]
        assert [f["tokens_emitted"] for f in records(tmp_path, "final")] == [info["tokens_emitted"]] * 2
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert f"stopline_tokens_emitted_total {2.0 * info['tokens_emitted']}" in metrics
        assert "not the usage billed to clients" in metrics


def test_an_upstream_4xx_about_the_request_is_the_clients_error_not_an_upstream_failure(tok, up, tmp_path):
    """Before, an upstream's 4xx (a request it cannot serve: more tokens than its context holds) was a 502 "the
    upstream failed", logged and counted as an upstream failure, and with --on-upstream-error answer it set the
    replica aside and answered a trial answer. Now its client gets that status and the upstream's message (no
    URL, the replica by number, the field it names), whole or streamed (before any chunk), counted as
    upstream_rejected; the replica stays in service. A 5xx, or a 401/403 (the gateway's own key), stays an
    upstream failure. (vLLM's own 400 is tested against a real vLLM.)"""
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, CONF, MODEL, on_upstream_error="answer",
                       **SMALL) as (gw, url):
        for status in (400, 422, 413):
            up.mode = f"answers {status}"
            got, out = ask(url, stopline={"request_id": f"r{status}"})
            assert got == status and out["error"]["type"] == "invalid_request_error", out
            assert out["error"]["param"] == "max_tokens" and "max_tokens is too large" in out["error"]["message"]
            assert "replica 1 of 1" in out["error"]["message"] and "10.0.0.5" not in out["error"]["message"]
            r = httpx.post(url + "/chat/completions", timeout=30, json={
                "model": MODEL, "messages": [{"role": "user", "content": "Count."}], "stream": True})
            assert r.status_code == status and r.json()["error"]["param"] == "max_tokens", r.text
        got, out = ask(url, max_tokens=None, max_completion_tokens=64)      # the field the client sent, named
        assert out["error"]["param"] == "max_completion_tokens", out
        assert "max_completion_tokens is too large" in out["error"]["message"], out
        replica = gw.engine.replicas[0]
        assert replica.failures == 0 and replica.down_until == 0, "a replica set aside for a client's error"
        assert not records(tmp_path, "upstream_error")                       # no trial answer made up
        finals = records(tmp_path, "final")
        assert len(finals) == 7 and {f["cause"] for f in finals} == {"upstream_rejected"}, finals
        assert [f["request"] for f in finals[:6:2]] == ["r400", "r422", "r413"]
        assert [e["status"] for e in records(tmp_path, "error")] == [400, 400, 422, 422, 413, 413, 413]
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'stopline_requests_total{endpoint="chat",outcome="upstream_rejected"} 7.0' in metrics
        assert 'outcome="upstream_error"' not in metrics
        up.mode = "good"
        assert ask(url)[0] == 200
    (tmp_path / "f").mkdir()
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path / "f", CONF, MODEL, **SMALL) as (gw, url):
        for status in (503, 401):
            up.mode = f"answers {status}"
            got, out = ask(url)
            assert got == 502 and out["error"]["type"] == "upstream_error", out
        assert [f["cause"] for f in records(tmp_path / "f", "final")] == ["upstream_failed"] * 2


def test_a_request_the_gateway_itself_fails_ends_with_one_final_record(tok, up, tmp_path):
    """A failure inside the gateway (here: its decision-latency histogram raises) gave the client a 500 (an error
    event when streamed) and the decision log only an ``error`` record: the request never ended there. Now it
    also gets exactly one final record, cause gateway_failed, with what was done by then, which the monitor and
    check-log leave out of the preset's figures."""
    class Broken:
        def observe(self, seconds):
            raise RuntimeError("a bug")
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        gw.metrics.decision_latency = Broken()
        status, out = ask(url, stopline={"request_id": "whole"})
        assert status == 500 and out["error"]["type"] == "server_error", out
        status, lines = ask(url, stream=True, stopline={"request_id": "streamed"})
        assert json.loads(lines[-2])["error"]["code"] == 500 and lines[-1] == "[DONE]"
        errors, finals = records(tmp_path, "error"), records(tmp_path, "final")
        assert [(e["request"], e["status"], e["error"]) for e in errors] == [
            ("whole", 500, "RuntimeError: a bug"), ("streamed", 500, "RuntimeError: a bug")]
        assert [(f["request"], f["cause"], f["stopped"], f["full_length"]) for f in finals] == [
            ("whole", "gateway_failed", False, False), ("streamed", "gateway_failed", False, False)], finals
        assert all(f["stop_pos"] >= 4 and f["n_checkpoints"] == 1 and f["preset_version"] == gw.version
                   for f in finals), finals                 # failed at its first checkpoint's decision, at token 4
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'stopline_requests_total{endpoint="chat",outcome="gateway_error"} 2.0' in metrics
        res = check_decisions(str(tmp_path / "decisions.jsonl"))
        assert res["ended_by_upstream"] == 2 and res["n"] == 0, res
        res = monitor(str(tmp_path / "decisions.jsonl"), preset=from_dict(NEVER))
        assert res["n_requests"] == 2 and res["observed"]["n"] == 0, res


def test_the_logs_header_and_preset_records_name_the_preset_and_its_calibration_run(tok, up, tmp_path, cli,
                                                                                     monkeypatch):
    """Before, the gateway's log header named neither the preset nor the calibration run, so the monitor could
    not read a gateway's log without --preset, --run and --db. Now the header carries the preset at start and
    the calibration (``{"db", "run"}``, as serve-demo writes it), every preset record (at start, on a reload)
    the calibration too, and ``serve`` takes --calibration-run and --db (checked at start; by default the run
    the preset's certificate was made on)."""
    from analysis.core.store import DEMO_DB, portable_path
    from analysis.production.gateway import calibration_of
    cal = calibration_of(from_dict(CONF), "5565a1e3", DEMO_DB)        # a run's prefix names it, as elsewhere
    assert cal == {"db": portable_path(DEMO_DB), "run": "5565a1e32c09"}
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, CONF, MODEL, calibration=cal,
                       **SMALL) as (gw, url):
        assert ask(url)[0] == 200
        time.sleep(0.01)
        (tmp_path / "preset.json").write_text(json.dumps(UNSURE))         # a new version, read on the next request
        assert ask(url)[0] == 200
        # a reloaded preset certified on another run (a recalibration's) promises what that run says; one whose
        # run cannot be found names none (the start's run promised something else)
        cert = {"epsilon": 0.05, "delta": 0.1, "n": 100, "risk": "drop", "bound": "b", "run": "c7a2483a9092"}
        for run in ("c7a2483a9092", "gone"):
            time.sleep(0.01)
            (tmp_path / "preset.json").write_text(json.dumps({**UNSURE, "certificate": {**cert, "run": run}}))
            assert ask(url)[0] == 200
    log = str(tmp_path / "decisions.jsonl")
    header = records(tmp_path, "header")[0]
    assert header["preset"] == from_dict(CONF).to_dict() and header["calibration"] == cal, header
    presets = records(tmp_path, "preset")
    assert [p["preset"] for p in presets[:2]] == [from_dict(CONF).to_dict(), from_dict(UNSURE).to_dict()]
    assert [p.get("calibration") for p in presets] == [cal, cal, {**cal, "run": "c7a2483a9092"}, None], presets
    code, out, err = cli("monitor", "--log", log, "--json")                     # no --preset, --run or --db
    assert code == 0, err
    assert json.loads(out)["promised"] is None              # the latest version's run is unknown: not the start's
    for i, run in ((0, cal["run"]), (2, "c7a2483a9092")):
        code, out, err = cli("monitor", "--log", log, "--json", "--preset-version", presets[i]["preset_version"])
        assert code == 0 and json.loads(out)["calibration"]["run"] == run, err + out
        assert json.loads(out)["promised"] is not None
    # serve checks the run at start, before anything is written; by default the certificate's run
    (tmp_path / "p.json").write_text(json.dumps(CONF))
    serve = ("serve", "--upstream", "http://127.0.0.1:9/v1", "--preset", tmp_path / "p.json", "--tokenizer", MODEL,
             "--log", tmp_path / "never.jsonl")
    code, _, err = cli(*serve, "--calibration-run", "nosuch", "--db", DEMO_DB)
    assert code == 2 and "the calibration run 'nosuch' cannot be found here" in err and "demo.duckdb" in err, err
    code, _, err = cli(*serve, "--db", DEMO_DB)
    assert code == 2 and "give the run too (--calibration-run RUN)" in err, err
    assert not (tmp_path / "never.jsonl").exists()
    certified = {**CONF, "certificate": {"epsilon": 0.05, "delta": 0.1, "n": 100, "risk": "drop", "bound": "b",
                                         "run": "5565a1e32c09"}}
    monkeypatch.setenv("STOPLINE_DB", str(tmp_path / "none.duckdb"))      # no store of one's own: the demo's
    assert calibration_of(from_dict(certified)) == cal
    assert calibration_of(from_dict({**certified, "certificate": {**certified["certificate"], "run": "gone"}})) is None
    assert calibration_of(from_dict(CONF)) is None


def test_serve_takes_a_preset_link_and_says_each_start_up_problem_in_one_line_before_anything_is_written(
        tok, up, tmp_path, cli):
    """Before: a preset link (which the docs offer and verify-controller takes) gave a FileNotFoundError
    traceback, so did a missing preset file; an unreachable upstream gave the ASGI server's "Application startup
    failed" and a traceback after the banner and the log's header; a port in use was found only after both. Now
    a link serves, a missing file is one error naming it, and an unreachable upstream and a port in use are each
    one error (what, where, a hint), found before the banner is printed or the log begun."""
    import subprocess
    import sys
    from analysis.presets.schema import encode
    from tests.helpers import free_port
    link, upstream, log = encode(B32), f"http://127.0.0.1:{up.port}/v1", tmp_path / "gateway.jsonl"
    base = ("serve", "--tokenizer", MODEL, "--log", log, "--every", "4", "--no-steps", "--no-transitions")
    code, out, err = cli(*base, "--upstream", upstream, "--preset", tmp_path / "missing.json")
    assert code == 2 and f"{tmp_path / 'missing.json'}: no such preset file" in err and "sl1." in err, err
    closed = free_port()
    code, out, err = cli(*base, "--upstream", f"http://127.0.0.1:{closed}/v1", "--preset", link)
    assert code == 2 and f"127.0.0.1:{closed}/v1" in err and "ConnectError" in err and "--upstream" in err, err
    assert "Traceback" not in err and "startup failed" not in err and not out and not log.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli(*base, "--upstream", upstream, "--preset", link, "--port", port)
    assert code == 2 and f"port {port} on 127.0.0.1 is in use" in err and "--port" in err, err
    assert not out and not log.exists()                              # no banner, no header
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "analysis", *map(str, base), "--upstream", upstream, "--preset", link,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"

        def serving() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            return _listening(port) and httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
        assert until(serving, 60)
        status, out = ask(url, max_tokens=64)
        assert status == 200 and out["stopline"]["setting"] == "budget(B=32)", out
    finally:
        proc.terminate()
        banner = proc.communicate(timeout=30)[0]
    assert "preset b32" in banner, banner
    logged = [json.loads(ln) for ln in open(log)]
    assert logged[0]["type"] == "header" and logged[0]["preset"] == from_dict(B32).to_dict()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_long_preset_link_an_unpaired_surrogate_and_two_names_for_max_tokens(tok, up, tmp_path):
    """A review found: a preset link or JSON past 255 bytes crashed `serve` (the name was tried as a file: "File
    name too long"); a prompt with an unpaired surrogate (which JSON can carry) was a 500 from the tokenizer;
    max_completion_tokens given as null hid the max_tokens beside it."""
    from analysis.presets.schema import encode
    from analysis.production.gateway import read_preset
    import random
    import string
    big = {**UNSURE, "name": "".join(random.Random(0).choices(string.ascii_letters, k=400))}   # (compresses little)
    for text in (encode(big), json.dumps(big)):
        assert len(text) > 255 and read_preset(text) == (None, text)
    with serve_gateway(f"http://127.0.0.1:{up.port}/v1", tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        for route, body in (("/completions", {"prompt": "Count \ud800."}),
                            ("/chat/completions", {"messages": [{"role": "user", "content": "Count \ud800."}]})):
            raw = json.dumps({"model": MODEL, "max_tokens": 4, **body})        # (ensure_ascii: "\\ud800" on the wire)
            r = httpx.post(url + route, content=raw, headers={"content-type": "application/json"}, timeout=30)
            assert r.status_code == 400 and "cannot be tokenized" in r.json()["error"]["message"], r.text
            assert r.json()["error"]["param"] in ("prompt", "messages")
        req = gw.parse({"model": MODEL, "prompt": "Count.", "max_completion_tokens": None, "max_tokens": 7}, False)
        assert req["max_tokens"] == 7
        req = gw.parse({"model": MODEL, "prompt": "Count.", "max_completion_tokens": 6, "max_tokens": 7}, False)
        assert req["max_tokens"] == 6                           # both: the newer name


@pytest.fixture
def second(tok):
    """A second replica, like the first."""
    up2 = counting(tok)
    yield up2
    up2.close()


def test_two_replicas_share_the_load_and_one_that_fails_is_set_aside(tok, second, tmp_path):
    """Before, every request went to replica 1 (the gateway never counted its requests in flight, and a
    replica that failed was set aside only with --on-upstream-error answer), and /v1/models asked replica 1
    alone. Now the least loaded replica takes a request; one that fails before its first token has its trace
    begun again on the other (the client sees nothing of it); one that fails after is the request's failure,
    and the next requests go to the other; /v1/models answers from a replica that does."""
    up = counting(tok)                                  # replica 1, its own (the test closes it)
    urls = [f"http://127.0.0.1:{u.port}/v1" for u in (up, second)]
    with serve_gateway(urls, tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        up.mode = "trickles"                            # replica 1 busy with a stream that goes on
        with httpx.stream("POST", url + "/chat/completions", timeout=30, json={
                "model": MODEL, "messages": [{"role": "user", "content": "Count."}], "max_tokens": 100_000,
                "stream": True}) as r:
            lines = r.iter_lines()                      # (held: a dropped iterator closes the stream)
            next(ln for ln in lines if ln.startswith("data: "))
            n1, n2 = len(up.bodies), len(second.bodies)
            status, out = ask(url)                      # meanwhile: the idle replica takes it
            assert status == 200 and (len(up.bodies), len(second.bodies)) == (n1, n2 + 1)
        up.mode = "answers 503"                         # replica 1 fails before its first token
        assert until(lambda: up.open_streams == 0)
        gw.engine.replicas[1].failures = 5              # (so that replica 1 is asked first)
        status, out = ask(url)
        assert status == 200 and out["choices"][0]["message"]["content"], out
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert "stopline_upstream_failovers_total 1.0" in metrics
        assert gw.engine.replicas[0].down_until > 0 and gw.engine.replicas[1].failures == 0      # it answered
        up.mode, second.mode = "good", "not JSON"       # replica 2 fails after its first tokens: the request's
        status, out = ask(url)
        assert status == 502 and "replica 2 of 2" in out["error"]["message"], out
        n1 = len(up.bodies)
        status, out = ask(url)                          # the next goes to replica 1
        assert status == 200 and len(up.bodies) == n1 + 1
        up.close()                                      # replica 1 gone: /v1/models from replica 2
        second.mode = "good"
        models = httpx.get(url + "/models", timeout=30)
        assert models.status_code == 200 and [c["id"] for c in models.json()["data"]] == [MODEL]
        assert all(r.in_flight == 0 for r in gw.engine.replicas)


def test_question_chars_live_measure_the_question_as_the_replay_does(tok):
    """The replay's question_chars is the dataset question's length; live it was the last user message's (the
    prompt template's words too: +68 characters for numbers) or the whole prompt (chat template too). The
    run's template is taken off when the text is in it."""
    from analysis.backend.prompts import GenConfig, build_prompt, chat_messages
    from analysis.production.gateway import Options, bare_question, question_wrappers
    t = tok[0]
    q = "What is 17 + 25?"
    for opt in (Options(), Options(system="Be brief."), Options(answer_type="math")):
        w = question_wrappers(t, opt)
        cfg = GenConfig(system=opt.system).resolved(opt.answer_type, "instruct")
        assert bare_question(chat_messages(q, cfg)[-1]["content"], w) == q          # a chat request's message
        assert bare_question(build_prompt(t, q, cfg), w) == q                       # a completions prompt
        assert bare_question("a prompt of my own", w) == "a prompt of my own"       # not in the template: as it is
    custom = Options(prompt_template="Q: {question}\nA (in \\boxed{{}}):")
    assert bare_question("Q: 2+2?\nA (in \\boxed{}):", question_wrappers(t, custom)) == "2+2?"


def test_the_gateway_takes_its_generation_options_from_the_calibration_run_and_says_where_given_ones_differ():
    from analysis.core.store import DEMO_DB
    from analysis.production.gateway import calibration_generation, options_for
    run = calibration_generation({"db": DEMO_DB, "run": "c7a2483a9092"})
    assert run["answer_type"] == "number" and run["every"] == 32 and run["cue"].endswith("\\boxed{")
    assert run["prompt_template"].startswith("{question}")
    none = dict.fromkeys(("answer_type", "every", "steps", "transitions", "cue", "max_answer_tokens"))
    got, notes = options_for(none, run)
    assert got["every"] == 32 and got["steps"] is run["steps"] and got["cue"] == run["cue"] and not notes
    assert got["prompt_template"] == run["prompt_template"]                      # read off live questions
    got, notes = options_for({**none, "every": 16, "answer_type": "number"}, run)
    assert got["every"] == 16 and len(notes) == 1 and notes[0].startswith("every 16 differs from the calibration "
                                                                         "run's 32")
    assert options_for(none, {}) == ({}, [])                                     # no calibration run: the defaults


def test_serve_says_where_its_options_differ_from_the_calibration_run(cli, tmp_path):
    from analysis.core.store import DEMO_DB
    from tests.helpers import free_port
    certified = {**CONF, "certificate": {"epsilon": 0.05, "delta": 0.1, "n": 100, "risk": "drop", "bound": "b",
                                         "run": "c7a2483a9092"}}
    (tmp_path / "p.json").write_text(json.dumps(certified))
    code, _, err = cli("serve", "--upstream", f"http://127.0.0.1:{free_port()}/v1", "--preset", tmp_path / "p.json",
                       "--tokenizer", MODEL, "--db", DEMO_DB, "--every", "4", "--log", tmp_path / "never.jsonl")
    assert code == 2 and "ConnectError" in err                                  # (no upstream: it stops there)
    assert "note: every 4 differs from the calibration run's 32" in err and err.count("note:") == 1, err


def test_a_loopback_gateway_answers_to_this_machines_names_and_not_to_web_pages_without_a_key(tok, up, tmp_path,
                                                                                              monkeypatch):
    """A review found: any web page the user visits could send a keyless loopback gateway requests (a "simple"
    text/plain POST runs generation on the user's server), and with DNS rebinding read the replies."""
    upstream = f"http://127.0.0.1:{up.port}/v1"
    with serve_gateway(upstream, tok, tmp_path, NEVER, MODEL, **SMALL) as (gw, url):
        port = url.split(":")[2].split("/")[0]
        status, out = ask(url, headers={"Host": f"evil.example:{port}"})
        assert status == 403 and "evil.example" in out["error"]["message"], out
        r = httpx.post(url + "/completions", headers={"Origin": "https://evil.example", "content-type": "text/plain"},
                       content=json.dumps({"model": MODEL, "prompt": "Count.", "max_tokens": 8}))
        assert r.status_code == 403 and "--api-key" in r.json()["error"]["message"]
        assert ask(url, headers={"Host": f"localhost:{port}"})[0] == 200           # this machine's names
        monkeypatch.setenv("STOPLINE_ALLOWED_HOSTS", "box.internal")
        assert ask(url, headers={"Host": f"box.internal:{port}"})[0] == 200        # a name one allows
    (tmp_path / "k").mkdir()
    with serve_gateway(upstream, tok, tmp_path / "k", NEVER, MODEL, api_key="k3y", **SMALL) as (gw, url):
        status, out = ask(url, headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k3y"})
        assert status == 200, out                                                   # a page that has the key
