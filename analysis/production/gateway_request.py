"""What a client may ask of the gateway: the OpenAI request fields it honours, those it refuses, and the chat
messages it reads. Nothing is silently ignored: a field the gateway cannot honour, or does not know, is a 400
that names it (as OpenAI's own API refuses an unrecognised argument).

Honoured: ``model``, ``messages`` (chat) or ``prompt`` (completions), ``max_tokens`` / ``max_completion_tokens``,
``temperature``, ``top_p``, ``seed``, ``n`` (1), ``stream``, ``stream_options.include_usage`` (the usage is in the
last chunk either way), ``stop`` (forwarded to the upstream's generation), ``presence_penalty`` and
``frequency_penalty``, and the serving engines' ``top_k``, ``min_p`` and ``repetition_penalty`` (forwarded to
the generation; the probes stay greedy, as the replay's), ``user`` (an end
user's id: nothing to do with it) and ``stopline``. Refused unless at the value that asks for nothing (what
some SDKs send by default): ``UNSUPPORTED``.
"""
from __future__ import annotations

import json
import math

from analysis.core.errors import brief

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOPS = 16                  # stop sequences per request
HONOURED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n",
            "stream", "stream_options", "stop", "presence_penalty", "frequency_penalty", "user", "stopline",
            "top_k", "min_p", "repetition_penalty"}
# the serving engines' own sampling fields (vLLM, SGLang and llama.cpp's server take them), forwarded like the
# penalties: field -> (its range, what it must be)
ENGINE_SAMPLING = {"top_k": ((-1, 1 << 20), "a whole number, -1 or 0 for all tokens"),
                   "min_p": ((0.0, 1.0), "a number from 0 to 1"),
                   "repetition_penalty": ((1e-6, 10.0), "a positive number (1: none)")}
# field -> (the values that ask for nothing besides null, why the gateway cannot honour it)
UNSUPPORTED = {
    "logprobs": ((False,), "its responses carry no log-probabilities"),
    "top_logprobs": ((0,), "its responses carry no log-probabilities"),
    "echo": ((False,), "the prompt is not echoed"),
    "best_of": ((1,), "one trace per request"),
    "suffix": (("",), "no insertion after a suffix"),
    "logit_bias": (({},), "the probes and the replay decode without a bias"),
    "tools": (([],), "no tool or function calling"),
    "tool_choice": (("none",), "no tool or function calling"),
    "parallel_tool_calls": ((True, False), "no tool or function calling"),
    "functions": (([],), "no tool or function calling"),
    "function_call": (("none",), "no tool or function calling"),
    "response_format": (({"type": "text"},), "no structured output: the text is the model's, cut at the stop"),
    "modalities": ((["text"],), "text only"),
    "audio": ((), "text only"),
    "prediction": ((), "no predicted outputs"),
    "web_search_options": ((), "no web search"),
    "reasoning_effort": ((), "the preset decides how long the model reasons"),
    "service_tier": (("auto", "default"), "one tier"),
    "store": ((False,), "responses are not stored for OpenAI's tools"),
    "metadata": (({},), "responses are not stored for OpenAI's tools"),
}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} is past the largest number JSON carries here")
    return x


def _no_constant(name: str):
    raise ValueError(f"{name}: JSON has no NaN or Infinity")


def strict_json(raw):
    """``json.loads`` as RFC 8259 reads JSON: NaN, Infinity and numbers past a float's range refused (Python's
    reader takes them, and the decision log, written as strict JSON, would refuse the request only after its
    whole generation). ValueError says why."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


def asks_nothing(value, offs: tuple) -> bool:
    """Whether ``value`` is null or one of ``offs`` (compared with its type: 0 is not false)."""
    return value is None or any(type(value) is type(o) and value == o for o in offs)


def check_fields(body: dict, chat: bool) -> None:
    """Every field of the body honoured, or at a value that asks for nothing; else BadRequest naming it."""
    for name, value in body.items():
        if name == ("prompt" if chat else "messages"):
            raise BadRequest(f"{name} is a field of /v1/{'completions' if chat else 'chat/completions'}, not of "
                             f"this route", name)
        if name in HONOURED:
            continue
        if name in UNSUPPORTED:
            offs, why = UNSUPPORTED[name]
            if not asks_nothing(value, offs):
                raise BadRequest(f"{name} is not supported through the Stopline gateway ({why}); leave it out",
                                 name)
            continue
        raise BadRequest(f"unknown parameter {name!r}: the Stopline gateway refuses what it does not know rather "
                         "than ignore it (its own fields go in the 'stopline' object)", name)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        for k, v in opts.items():
            if k != "include_usage":
                raise BadRequest(f"stream_options.{k} is not supported through the Stopline gateway (the usage "
                                 "comes in the last chunk)", f"stream_options.{k}")
            if not isinstance(v, (bool, type(None))):
                raise BadRequest("stream_options.include_usage must be true or false", "stream_options.include_usage")


def sampling(body: dict) -> dict:
    """The fields forwarded to the upstream's generation: ``stop`` (a list) and the penalties, checked."""
    out = {}
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    if stops:
        out["stop"] = list(dict.fromkeys(stops))
    for k in ("presence_penalty", "frequency_penalty"):
        v = body.get(k)
        if v is None:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -2 <= v <= 2:
            raise BadRequest(f"{k} must be a number between -2 and 2", k)
        if v:
            out[k] = float(v)
    for k, ((lo, hi), what) in ENGINE_SAMPLING.items():
        v = body.get(k)
        if v is None:
            continue
        whole = k == "top_k"
        if (isinstance(v, bool) or not isinstance(v, int if whole else (int, float)) or not lo <= v <= hi):
            raise BadRequest(f"{k} must be {what}", k)
        out[k] = int(v) if whole else float(v)
    return out


def chat_messages(msgs) -> list[dict]:
    """The messages as the chat template reads them: each a role the template knows and string content (text
    parts joined with newlines, as vLLM joins them; a developer message is the system's, as vLLM renders it);
    BadRequest names the message and field."""
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadRequest(f"{where} must be a {{role, content}} object", where)
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}, not {brief(role)}", f"{where}.role")
        msg = {"role": "system" if role == "developer" else role}
        for k, v in m.items():
            if k in ("role", "content"):
                continue
            if k in ("name", "tool_call_id") and isinstance(v, str):
                msg[k] = v
            elif v not in (None, [], {}):         # (a reply's own empty fields, sent back as SDKs do, are nothing)
                raise BadRequest(f"{where}.{k} is not supported through the Stopline gateway"
                                 + (" (no tool or function calling)" if "call" in k else ""), f"{where}.{k}")
        msg["content"] = content(m.get("content"), where)
        out.append(msg)
    return out


def content(c, where: str) -> str:
    """A message's content as text: a string, or a list of text parts joined with newlines."""
    if isinstance(c, str):
        return c
    if not isinstance(c, list):
        raise BadRequest(f"{where}.content must be a string or a list of text parts", f"{where}.content")
    texts = []
    for k, part in enumerate(c):
        at = f"{where}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            if isinstance(kind, str):
                raise BadRequest(f"{at} is a {kind!r} part, which is not supported through the Stopline gateway "
                                 "(text parts only)", f"{at}.type")
            raise BadRequest(f"{at} must be a text part, {{\"type\": \"text\", \"text\": ...}}", at)
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"{at}.text must be a string", f"{at}.text")
        texts.append(part["text"])
    return "\n".join(texts)
