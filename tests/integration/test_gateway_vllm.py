"""The gateway (`python -m analysis serve`) in front of a real vLLM server: OpenAI shapes (chat and completions,
streamed and not), a stop where the replay would stop (check-log replays the decision log), routing by a tag,
A/B arms stable per request id, exploration, hot preset reload (file, and the admin endpoint with its own key),
a client that disconnects, bad requests, and the API key."""
import json
import threading
import time

import httpx
import pytest

from analysis.core.answers import normalize
from analysis.backend.models import load_tokenizer
from analysis.backend.prompts import CUES
from analysis.presets.routing import request_fields, route
from analysis.presets.schema import loads
from analysis.production.gateway import check_bind
from analysis.production.verify import check_decisions
from analysis.backend import vllm_local
from tests.helpers import serve_gateway
from tests.integration.conftest import MODEL, start_server

pytestmark = pytest.mark.vllm
NEVER = {"stopline_preset": 1, "name": "never", "setting": {"family": "budget", "params": {"B": 32768}}}
B32 = {"stopline_preset": 1, "name": "b32", "setting": {"family": "budget", "params": {"B": 32}}}
QUESTION = "Explain step by step how to compute 17 * 23, then write the final answer inside \\boxed{}."
LONG = "List the numbers from 1 to 500, separated by commas."   # an answer far longer than a test waits for (greedy
# SmolLM2 writes 1,500 tokens and more; "Count from 1 to 1000, one number per line." ended after 122)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(MODEL)


def gateway(server, tok, tmp_path, preset: dict, api_key=None, admin_key=None, **opt):
    return serve_gateway(server, tok, tmp_path, preset, MODEL, api_key=api_key, admin_key=admin_key, **opt)


def chat(url, content=QUESTION, max_tokens=48, stream=False, headers=None, **sl):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": stream}
    if sl:
        body["stopline"] = sl
    if not stream:
        return httpx.post(url + "/chat/completions", json=body, timeout=600, headers=headers)
    text, last = [], None
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=600, headers=headers) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        d = json.loads(ln[6:])
        text.append(d["choices"][0]["delta"].get("content", ""))
        last = d
    return "".join(text), last


def test_chat_and_completions_streamed_and_not_pass_the_upstream_through(server, tok, tmp_path):
    with gateway(server, tok, tmp_path, NEVER) as (gw, url):
        whole = chat(url).json()
        assert whole["object"] == "chat.completion" and not whole["stopline"]["stopped"]
        assert whole["stopline"]["checkpoints"] >= 1 and whole["stopline"]["probe_tokens"] == 0   # a budget: no probes
        streamed, last = chat(url, stream=True)
        assert streamed == whole["choices"][0]["message"]["content"]       # greedy: the same text both ways
        assert last["object"] == "chat.completion.chunk" and last["stopline"]["tokens_emitted"] > 0
        direct = httpx.post(server + "/completions", timeout=600, json={
            "model": MODEL, "prompt": "Q: What is 12 + 30?\nA:", "max_tokens": 40, "temperature": 0}).json()
        mine = httpx.post(url + "/completions", timeout=600, json={
            "model": MODEL, "prompt": "Q: What is 12 + 30?\nA:", "max_tokens": 40}).json()
        assert mine["choices"][0]["text"] == direct["choices"][0]["text"]
        # usage as the upstream's: the end of sequence the model wrote counted too (it was one short)
        assert mine["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
        assert mine["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"], (mine, direct)
        (card,) = httpx.get(url + "/models").json()["data"]             # the model served, not where it lies
        assert card["id"] == MODEL and card["max_model_len"] > 0 and "root" not in card
        m = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'stopline_requests_total{endpoint="chat",outcome="full"} 2.0' in m


def stream_text(url, body) -> tuple[str, dict]:
    """A streamed chat completion's text and its last chunk."""
    with httpx.stream("POST", url + "/chat/completions", json={**body, "stream": True}, timeout=600) as r:
        assert r.status_code == 200
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: ") and ln != "data: [DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), chunks[-1]


def test_stop_sequences_end_the_generation_where_vllm_ends_it(server, tok, tmp_path):
    """Before, ``stop`` was dropped: the answer ran on past it. Now it goes to the upstream's generation, and the
    client gets what vLLM gives directly (the text up to the stop sequence, finish_reason stop, the same count
    of completion tokens), whole or streamed, also for a sequence that spans tokens (the text that may begin it
    is held back). With a checkpoint at every token, none is decided on text past the stop sequence's start."""
    counting = [{"role": "user", "content": "Count from 1 to 20, one number per line."}]
    with gateway(server, tok, tmp_path, NEVER, every=1, steps=False, transitions=False) as (gw, url):
        for stop in (["6"], ["\n6", "xyz"]):
            body = {"model": MODEL, "messages": counting, "max_tokens": 120, "temperature": 0, "stop": stop}
            direct = httpx.post(server + "/chat/completions", json=body, timeout=600).json()
            text = direct["choices"][0]["message"]["content"]
            assert direct["choices"][0]["finish_reason"] == "stop" and "5" in text and "6" not in text, direct
            whole = httpx.post(url + "/chat/completions", json=body, timeout=600).json()
            assert whole["choices"][0]["message"]["content"] == text, (stop, whole)
            assert whole["choices"][0]["finish_reason"] == "stop"
            assert whole["usage"]["completion_tokens"] == direct["usage"]["completion_tokens"]
            streamed, last = stream_text(url, body)
            assert streamed == text and last["choices"][0]["finish_reason"] == "stop", (stop, streamed)
        logged = [json.loads(ln) for ln in open(tmp_path / "decisions.jsonl")]
        for fin in (r for r in logged if r["type"] == "final"):
            cks = [r["pos"] for r in logged if r["type"] == "checkpoint" and r["request"] == fin["request"]]
            assert fin["full_length"] and fin["answer"] == "5" and cks, fin   # the model's answer: the client's text
            assert max(cks) < fin["stop_pos"], (cks, fin)      # the token that completes the stop: no checkpoint
        assert check_decisions(str(tmp_path / "decisions.jsonl"))["agreement"] == 1.0


def test_chat_content_parts_and_a_developer_message_read_as_vllm_reads_them(server, tok, tmp_path):
    """Content as a list of text parts (what many SDKs send) was refused; now it is joined as vLLM joins it, and a
    developer message is rendered as vLLM renders it: the same prompt, the same greedy answer."""
    messages = [{"role": "developer", "content": "Answer with one number."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"},
                                             {"type": "text", "text": "Then add 4."}]}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 24, "temperature": 0}
    with gateway(server, tok, tmp_path, NEVER) as (gw, url):
        direct = httpx.post(server + "/chat/completions", json=body, timeout=600).json()
        mine = httpx.post(url + "/chat/completions", json=body, timeout=600).json()
        assert mine["usage"]["prompt_tokens"] == direct["usage"]["prompt_tokens"], (mine, direct)
        assert mine["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]


def test_a_stop_where_the_replay_stops_ends_with_the_trial_answer(server, tok, tmp_path):
    with gateway(server, tok, tmp_path, B32) as (gw, url):
        out = chat(url, max_tokens=160).json()
        info = out["stopline"]
        assert info["stopped"] and info["position"] >= 32 and info["setting"] == "budget(B=32)"
        text = out["choices"][0]["message"]["content"]
        assert "\\boxed{" in text and text.endswith("}")
        before = text[: text.rindex(gw.cue)]
        assert chat(url, content="What is 2 + 2?", max_tokens=16).json()["stopline"]["position"] < 32
        # the text before the cue is the upstream's own greedy trace, cut at the stop
        t = tok[0]
        ids = t(t.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                      tokenize=False), add_special_tokens=False)["input_ids"]
        direct = httpx.post(server + "/completions", timeout=600, json={
            "model": MODEL, "prompt": ids, "max_tokens": 160, "temperature": 0}).json()
        assert direct["choices"][0]["text"].startswith(before)
        res = check_decisions(str(tmp_path / "decisions.jsonl"))    # every live decision = the replay's
        assert res["agreement"] == 1.0 and res["n"] == 2, res
    (tmp_path / "k").mkdir()
    with gateway(server, tok, tmp_path / "k", B32, on_stop="continue", continue_tokens=6) as (gw, url):
        # continue: after the cue the upstream writes the answer itself, up to continue_tokens, closed with "}"
        out = chat(url, max_tokens=160).json()
        text = out["choices"][0]["message"]["content"]
        assert out["stopline"]["stopped"] and text.startswith(before) and text.endswith("}")
        written = text[text.rindex(gw.cue) + len(gw.cue):-1]
        assert len(t(written, add_special_tokens=False)["input_ids"]) <= 6 + 1   # retokenised: one of slack
        final = [json.loads(ln) for ln in open(tmp_path / "k" / "decisions.jsonl") if '"final"' in ln][-1]
        assert written.strip() and final["answer"] == normalize(written.strip(), "number")   # the budget's answer
    conf = {"stopline_preset": 1, "name": "c", "setting": {"family": "confidence", "params": {"tau": 0.6}}}
    (tmp_path / "c").mkdir()
    with gateway(server, tok, tmp_path / "c", conf) as (gw, url):
        infos = [chat(url, content=q, max_tokens=96).json()["stopline"] for q in
                 (QUESTION, "What is 9 * 8? Answer inside \\boxed{}.", "Count from 1 to 20.")]
        assert all(i["probe_tokens"] > 0 for i in infos)                 # confidence reads every probe
        res = check_decisions(str(tmp_path / "c" / "decisions.jsonl"))
        assert res["agreement"] == 1.0 and res["n"] == 3, res
    sparse = {"stopline_preset": 1, "name": "s", "setting": {"family": "confidence", "params": {"tau": 0.95},
              "schedule": {"every": 1, "at_steps": False, "at_transitions": False}}}
    (tmp_path / "s").mkdir()
    with gateway(server, tok, tmp_path / "s", sparse) as (gw, url):
        info = chat(url, content="Count from 1 to 100, one number per line.", max_tokens=200).json()["stopline"]
        assert info["position"] >= 32, info
        logged = [json.loads(ln) for ln in open(tmp_path / "s" / "decisions.jsonl")]
        probed = [rec["pos"] for rec in logged if rec["type"] == "checkpoint"]
        assert probed and all(p % 32 == 0 for p in probed)           # the schedule's: intervals only, no steps
        assert check_decisions(str(tmp_path / "s" / "decisions.jsonl"))["agreement"] == 1.0


def test_routing_by_tag_ab_arms_and_exploration(server, tok, tmp_path):
    preset = {**NEVER, "routing": {"rules": [{"if": {"field": "tag.priority", "in": ["low"]},
                                              "setting": B32["setting"]}],
                                   "ab": {"challenger": {"stopline_preset": 1, "name": "c",
                                                         "setting": {"family": "budget", "params": {"B": 30000}}},
                                          "share": 0.5, "salt": "t"}}}
    p = loads(json.dumps(preset))
    with gateway(server, tok, tmp_path, preset) as (gw, url):
        low = chat(url, max_tokens=48, tags={"priority": "low"}, request_id="r-low").json()["stopline"]
        assert low["setting"] == "budget(B=32)" and low["stopped"]
        by_header = chat(url, max_tokens=48, headers={"X-Stopline-Tags": '{"priority": "low"}',
                                                      "X-Request-Id": "r-h"}).json()["stopline"]
        assert by_header["setting"] == "budget(B=32)" and by_header["request_id"] == "r-h"
        bad = chat(url, max_tokens=8, headers={"X-Stopline-Tags": "low"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-stopline-tags"
        for rid in ("a1", "a2", "a3", "a4"):
            got = [chat(url, max_tokens=8, request_id=rid).json()["stopline"]["arm"] for _ in range(2)]
            assert got[0] == got[1]                                        # stable per request id
            assert got[0] == route(p, rid, request_fields(QUESTION, {}, {})).arm   # as the replay routes it
    explore = {**B32, "routing": {"explore": 1.0}}
    (tmp_path / "x").mkdir()
    with gateway(server, tok, tmp_path / "x", explore) as (gw, url):
        info = chat(url, max_tokens=96).json()["stopline"]
        assert info["explore"] and not info["stopped"] and info.get("shadow_position", 0) >= 32
        assert info["probe_tokens"] > 0            # explored: every checkpoint probed, for recalibration
        fin = [json.loads(ln) for ln in open(tmp_path / "x" / "decisions.jsonl") if '"final"' in ln]
        assert fin[-1]["shadow_pos"] == info["shadow_position"]


def test_a_new_preset_version_is_picked_up_without_a_restart(server, tok, tmp_path):
    with gateway(server, tok, tmp_path, NEVER, api_key="k3y", admin_key="4dm1n") as (gw, url):
        h, admin = {"Authorization": "Bearer k3y"}, {"Authorization": "Bearer 4dm1n"}
        v1 = chat(url, max_tokens=8, headers=h).json()["stopline"]["preset_version"]
        time.sleep(0.01)
        (tmp_path / "preset.json").write_text(json.dumps(B32))
        got = chat(url, max_tokens=48, headers=h).json()["stopline"]
        assert got["preset_version"] != v1 and got["setting"] == "budget(B=32)"
        refused = httpx.post(url.removesuffix("/v1") + "/admin/preset", content=json.dumps(NEVER), headers=h)
        assert refused.status_code == 401 and gw.version == got["preset_version"]     # the clients' key is not it
        bad = httpx.post(url.removesuffix("/v1") + "/admin/preset", content='{"stopline_preset": 1}', headers=admin)
        assert bad.status_code == 400 and gw.version == got["preset_version"]
        ok = httpx.post(url.removesuffix("/v1") + "/admin/preset", content=json.dumps(NEVER), headers=admin)
        assert ok.status_code == 200 and ok.json()["preset_version"] == v1
        assert chat(url, max_tokens=8).status_code == 401                     # no key
        versions = {json.loads(ln).get("preset_version") for ln in open(tmp_path / "decisions.jsonl")
                    if '"final"' in ln}
        assert versions == {v1, got["preset_version"]}


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_cancels_its_upstream_request_and_the_log_ends_it(server, tok, tmp_path, stream):
    """A stream's client reads three chunks and closes; a whole response's client gives up waiting. The
    upstream's running requests drop to zero, and the decision log gets the request's one final record (cause
    client_disconnected, the tokens generated by then, the preset version), counted by its outcome."""
    def running():
        m = httpx.get(server.removesuffix("/v1") + "/metrics", timeout=10).text
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in m.splitlines() if ln.startswith("vllm:num_requests_running"))

    def finals():
        return [json.loads(ln) for ln in open(tmp_path / "decisions.jsonl") if '"final"' in ln]
    with gateway(server, tok, tmp_path, NEVER) as (gw, url):
        def metrics():
            return httpx.get(url.removesuffix("/v1") + "/metrics").text
        body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}], "max_tokens": 1500, "stream": stream,
                "stopline": {"request_id": "gone"}}
        if stream:
            with httpx.stream("POST", url + "/chat/completions", json=body, timeout=600) as r:
                n = 0
                for ln in r.iter_lines():
                    n += ln.startswith("data: ")
                    if n >= 3:
                        assert running() >= 1          # (here: leaving the loop closes the connection at once)
                        break
        else:
            # gives up after 1 s, and closes: well before the answer could end (with 3 s, an unloaded CPU sometimes
            # finished the whole answer first, and the client heard it)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url + "/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        counted = 'stopline_requests_total{endpoint="chat",outcome="client_disconnected"} 1.0'
        t0 = time.monotonic()
        while (running() > 0 or not finals() or counted not in metrics()) and time.monotonic() - t0 < 30:
            time.sleep(0.5)
        assert running() == 0
        got = finals()
        assert len(got) == 1 and got[0]["request"] == "gone" and got[0]["cause"] == "client_disconnected", got
        assert not got[0]["stopped"] and not got[0]["full_length"] and got[0]["preset_version"] == gw.version
        assert (3 if stream else 1) <= got[0]["tokens_emitted"] < 1500, got
        assert counted in metrics()


def test_bad_requests_get_400_with_the_field_413_when_too_large(server, tok, tmp_path):
    with gateway(server, tok, tmp_path, NEVER, max_body=4096) as (gw, url):
        def post(path, body=None, content=None):
            return httpx.post(url + path, json=body, content=content, timeout=60,
                              headers={"content-type": "application/json"})
        r = post("/chat/completions", {"model": MODEL})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        r = post("/completions", {"model": MODEL, "prompt": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        r = post("/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        r = post("/completions", {"model": "other", "prompt": "x"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"
        r = post("/completions", content=b"{not json")
        assert r.status_code == 400
        r = post("/completions", {"model": MODEL, "prompt": "x" * 10_000})
        assert r.status_code == 413
    with pytest.raises(Exception, match="needs an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "k")


def test_a_request_vllm_refuses_is_the_clients_400_not_an_upstream_failure(server, tok, tmp_path):
    """max_tokens past the model's context: vLLM answers 400. Before, the client got 502 "the upstream failed",
    logged upstream_failed and counted upstream_error (and --on-upstream-error answer set the replica aside).
    Now it gets vLLM's 400, its message and field, whole or streamed, counted upstream_rejected, and the replica
    serves on."""
    with gateway(server, tok, tmp_path, NEVER, on_upstream_error="answer") as (gw, url):
        r = chat(url, max_tokens=100_000)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "max_tokens" and "max_model_len" in err["message"], err
        assert err["type"] == "invalid_request_error" and "127.0.0.1" not in err["message"]
        r = httpx.post(url + "/chat/completions", timeout=600, json={
            "model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 100_000, "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
        assert gw.engine.replicas[0].failures == 0
        assert chat(url, max_tokens=8).status_code == 200
        finals = [json.loads(ln) for ln in open(tmp_path / "decisions.jsonl") if '"final"' in ln]
        assert [f.get("cause") for f in finals] == ["upstream_rejected", "upstream_rejected", None], finals
        m = httpx.get(url.removesuffix("/v1") + "/metrics").text
        assert 'outcome="upstream_rejected"} 2.0' in m and 'outcome="upstream_error"' not in m


def test_probes_near_the_end_of_the_models_context_are_cut_to_fit_not_a_502(server, tok, tmp_path):
    """A request that fills the model's context (prompt + max_tokens = max_model_len, which vLLM accepts): its last
    checkpoints' probes (prefix + cue + the answer cap) would pass the context end, and vLLM refused them, so the
    whole request failed with 502. The gateway now reads max_model_len from GET /v1/models and asks a probe for
    no more answer tokens than fit; a probe with no room at all is not sent (that checkpoint has no trial
    answer)."""
    t = tok[0]
    n_ctx = httpx.get(server + "/models", timeout=10).json()["data"][0]["max_model_len"]
    prompt, k = "", 1
    while len(t(prompt, add_special_tokens=False)["input_ids"]) < n_ctx - 104:    # a count the model goes on with
        prompt, k = prompt + f"{k}, ", k + 1
    p = len(t(prompt, add_special_tokens=False)["input_ids"])
    cue = len(t(CUES["instruct"], add_special_tokens=False)["input_ids"])
    assert 96 <= n_ctx - p < 96 + cue, p     # probes at 32, 64 and 96: the last one's prompt past the end
    conf = {"stopline_preset": 1, "name": "c", "setting": {"family": "confidence", "params": {"tau": 0.999},
            "schedule": {"every": 1, "at_steps": False, "at_transitions": False}}}
    with gateway(server, tok, tmp_path, conf) as (gw, url):
        r = httpx.post(url + "/completions", timeout=600,
                       json={"model": MODEL, "prompt": prompt, "max_tokens": n_ctx - p, "temperature": 0})
        assert r.status_code == 200, r.text
        info = r.json()["stopline"]
        assert not info["stopped"] and info["position"] == n_ctx - p and info["probe_tokens"] > 0, info
        assert gw.engine.stats.probes_past_context == 1 and gw.engine.info["max_model_len"] == n_ctx
    logged = [json.loads(ln) for ln in open(tmp_path / "decisions.jsonl")]
    cps = {rec["pos"]: rec for rec in logged if rec["type"] == "checkpoint"}
    assert sorted(cps) == [32, 64, 96] and cps[64]["answer"] and not cps[96]["answer"], cps
    assert cps[96]["probe_tokens"] == 0 and cps[64]["probe_tokens"] > 0
    assert [rec.get("cause") for rec in logged if rec["type"] == "final"] == [None]
    assert check_decisions(str(tmp_path / "decisions.jsonl"))["agreement"] == 1.0


def stream_events(url, body, events: list, started: threading.Event):
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=600) as r:
        for ln in r.iter_lines():
            if ln.startswith("data: "):
                events.append(ln[6:])
                if len(events) == 3:
                    started.set()
    started.set()


def test_an_upstream_that_dies_mid_stream_gives_a_clean_error_or_the_trial_answer_so_far(server, tok, tmp_path):
    """One upstream is kill -9'd while two gateways stream from it: the default one gives the client an OpenAI
    error event; the one with --on-upstream-error answer ends with the trial answer at the last token written,
    probed on the replica that is still up, and logs why it stopped."""
    proc, upstream = start_server(tmp_path)
    (tmp_path / "err").mkdir()
    (tmp_path / "ans").mkdir()
    try:
        with gateway(upstream, tok, tmp_path / "err", NEVER) as (gw, url), \
                gateway([upstream, server], tok, tmp_path / "ans", NEVER, on_upstream_error="answer") as (gw2, url2):
            body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1500,
                    "stream": True}
            e1, e2, s1, s2 = [], [], threading.Event(), threading.Event()
            th = [threading.Thread(target=stream_events, args=(u, body, e, s)) for u, e, s in
                  ((url, e1, s1), (url2, e2, s2))]
            for t in th:
                t.start()
            assert s1.wait(600) and s2.wait(600)
            vllm_local.kill(proc)                            # as a crash would
            for t in th:
                t.join(600)
            assert e1[-1] == "[DONE]" and e2[-1] == "[DONE]"
            err = json.loads(e1[-2])
            assert err["error"]["type"] == "upstream_error" and "upstream failed" in err["error"]["message"]
            logged = [json.loads(ln) for ln in open(tmp_path / "err" / "decisions.jsonl")]
            assert any(rec["type"] == "error" for rec in logged)
            m = httpx.get(url.removesuffix("/v1") + "/metrics").text
            assert 'stopline_requests_total{endpoint="chat",outcome="upstream_error"} 1.0' in m

            chunks = [json.loads(x) for x in e2[:-1]]
            assert not any("error" in c for c in chunks)
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            info = chunks[-1]["stopline"]
            assert info["stopped"] and info["cause"] == "upstream_error"
            cue = gw2.cue
            assert text.endswith("}") and cue in text
            answer = text[text.rindex(cue) + len(cue):-1]
            logged = [json.loads(ln) for ln in open(tmp_path / "ans" / "decisions.jsonl")]
            fail = [r for r in logged if r["type"] == "upstream_error"]
            final = [r for r in logged if r["type"] == "final"]
            assert len(fail) == 1 and fail[0]["answer_from"] == "probed" and fail[0]["pos"] == info["position"]
            assert final[0]["cause"] == "upstream_error" and final[0]["stop_pos"] == info["position"]
            assert info["probe_tokens"] > 0 and len(answer) <= 200
            m = httpx.get(url2.removesuffix("/v1") + "/metrics").text
            assert 'outcome="upstream_error_answered"} 1.0' in m and "stopline_upstream_error_answers_total 1.0" in m
            assert "stopline_early_stops_total{" not in m         # not counted as the preset's stop
            res = check_decisions(str(tmp_path / "ans" / "decisions.jsonl"))      # nor replayed as its decision
            assert res["ended_by_upstream"] == 1 and res["n"] == 0, res
    finally:
        vllm_local.stop(proc)


def test_verify_controller_through_the_gateway_on_a_run_recorded_through_the_same_server(server, tmp_path, cli):
    from analysis.backend.prompts import GenConfig
    from analysis.core.store import Store
    from analysis.ingest.pipeline import run_openai
    db = tmp_path / "cal.duckdb"
    res = run_openai(Store(db), [server], MODEL, MODEL, "rg:basic_arithmetic", limit=4,
                     cfg=GenConfig(max_new_tokens=96), concurrency=4, show_progress=False)
    (tmp_path / "p.json").write_text(json.dumps({"stopline_preset": 1, "name": "c",
                                                 "setting": {"family": "confidence", "params": {"tau": 0.8}}}))
    code, out, err = cli("verify-controller", "--engine", "openai", "--base-url", server, "--tokenizer", MODEL,
                         "--run", res["run_id"], "--preset", tmp_path / "p.json", "--db", db, "--json")
    assert code == 0, err
    v = json.loads(out)
    assert v["decision_agreement"] == 1.0 and v["n"] == 4 and 0 <= v["agreement"] <= 1
    # a certified preset (certify on the demo's SmolLM2 run) deploys through the gateway the same way (issue 23)
    from analysis.core.store import DEMO_DB
    code, out, err = cli("certify", "--db", DEMO_DB, "--run", "5565a1e32c09", "--epsilon", "0.05", "--delta", "0.1",
                         "--family", "confidence", "--save", tmp_path / "cert.json")
    assert code == 0 and json.loads((tmp_path / "cert.json").read_text())["certificate"]["certified"], err
    code, out, err = cli("verify-controller", "--engine", "openai", "--base-url", server, "--tokenizer", MODEL,
                         "--run", res["run_id"], "--preset", tmp_path / "cert.json", "--db", db, "--json")
    assert code == 0 and json.loads(out)["decision_agreement"] == 1.0, err
