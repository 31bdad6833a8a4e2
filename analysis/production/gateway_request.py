"""What a client may ask of the gateway: the chat messages it reads (their roles and content, checked, each
error naming the message and field).
"""
from __future__ import annotations

from analysis.core.errors import brief

ROLES = ("system", "user", "assistant", "developer", "tool")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


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
