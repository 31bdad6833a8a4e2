"""Records from the files people keep generations in, each with where it came from (for error messages).

- JSONL (``.jsonl``, ``.ndjson``, anything else): one object per line; a line over ``max_line_mb`` is refused.
- a JSON document (``.json``): a top-level list of objects, or a list at a dotted path (``records="tasks"``).
- CSV (``.csv``, ``.tsv``) and Parquet (``.parquet``, ``.pq``): one record per row (pyarrow reads them).

Every record is a dict; fields are read with dotted paths (``outputs.solution``, ``choices.0.message``); in a
CSV or Parquet file a column may itself be named with dots. ``Loc`` names a record in an error: the line of a
JSONL or CSV file, the item of a JSON document (``tasks[3]``), the row of a Parquet file.

OpenAI-style chat logs (``chat_fields``) turn a request/response pair, or a response alone, into a question
and a response text; the reasoning of a thinking model (``message.reasoning_content``, ``message.reasoning``,
or inline ``<think>…</think>``) becomes a ``<think>…</think>`` part before the answer, as a thinking trace.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from analysis.ingest.datasets import BOM, check_file, get_path
from analysis.core.errors import json_problem, StoplineError

KINDS = ("jsonl", "json", "csv", "parquet")
_EXT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
        ".pq": "parquet"}
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class Loc(NamedTuple):
    """Where a record is: ``line`` (JSONL, CSV) or ``item`` (a JSON document's ``tasks[3]``, Parquet's ``row 7``).
    A named tuple: one is made per record of a file of hundreds of thousands."""
    file: str
    line: int | None = None
    item: str | None = None

    def error(self, message: str, field: str | None = None, hint: str | None = None) -> StoplineError:
        where = ".".join(x for x in (self.item, field) if x) or None
        return StoplineError(message, file=self.file, line=self.line, field=where, hint=hint)


def kind_of(path: str, kind: str | None = None) -> str:
    if kind and kind != "auto":
        if kind not in KINDS:
            raise StoplineError(f"unknown file kind {kind!r}; the known ones are {', '.join(KINDS)}")
        return kind
    return _EXT.get(Path(path).suffix.lower(), "jsonl")


def field(rec: dict, path: str, loc: Loc, what: str, hint: str | None = None) -> Any:
    """The value at a dotted path (a column named with the dots itself first), or an error naming it."""
    if path in rec:
        return rec[path]
    try:
        return get_path(rec, path)
    except KeyError as e:
        raise loc.error(f"missing (no '{e.args[0]}' in the path)", path,
                        hint or f"set the {what} field with --{what}-field") from None


def _loads():
    return orjson.loads, (orjson.JSONDecodeError,)


def read(path: str, kind: str | None = None, records: str | None = None, max_line_mb: float = 16
         ) -> tuple[list[tuple[Loc, dict]], str]:
    """Every record of the file with its location, and the file's sha256. Raises StoplineError naming the
    file (and line or item) for anything unreadable; reads the whole file before returning."""
    check_file(path)
    if max_line_mb <= 0:
        raise StoplineError(f"--max-line-mb must be positive, not {max_line_mb:g}")
    kind = kind_of(path, kind)
    if records and kind != "json":
        raise StoplineError(f"--records applies to JSON documents, and this is read as {kind}", file=path)
    out = list({"jsonl": _jsonl, "json": _json_doc, "csv": _table, "parquet": _table}[kind](
        path, kind=kind, records=records, max_line_mb=max_line_mb))
    if not out:
        raise StoplineError("no records (the file is empty)", file=path)
    return out, sha256(path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonl(path: str, max_line_mb: float, **_) -> Iterator[tuple[Loc, dict]]:
    loads, errors = _loads()
    limit = int(max_line_mb * 1024 * 1024)
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            loc = Loc(path, lineno)
            if len(raw) > limit and not raw.endswith(b"\n"):
                raise loc.error(f"line is longer than {max_line_mb:g} MB; is this really JSONL?",
                                hint="raise the limit with --max-line-mb if the line is meant to be that long")
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            try:
                rec = loads(raw)                # (orjson checks the UTF-8 too: the message says which it was)
            except errors as e:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as u:
                    raise loc.error(f"not valid UTF-8 (byte {u.start} of the line)") from None
                raise loc.error(json_problem(e)) from None
            if not isinstance(rec, dict):
                raise loc.error(f"expected a JSON object, got {type(rec).__name__}")
            yield loc, rec


def _json_doc(path: str, records: str | None, **_) -> Iterator[tuple[Loc, dict]]:
    loads, errors = _loads()
    data = Path(path).read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        doc = loads(data)
    except errors as e:
        raise StoplineError(f"invalid JSON at column {e.colno}: {e.msg}", file=path, line=e.lineno) from None
    items = doc
    if records:
        try:
            items = get_path(doc, records)
        except KeyError as e:
            raise StoplineError(f"no '{e.args[0]}' in the document", file=path, field=records) from None
    if not isinstance(items, list):
        keys = ", ".join(list(items)[:8]) if isinstance(items, dict) else type(items).__name__
        raise StoplineError(f"expected a list of records{' at ' + records if records else ''}, got "
                            f"{'an object with ' + keys if isinstance(items, dict) else keys}", file=path,
                            field=records, hint="name the list with --records PATH (a dotted path)")
    prefix = records or ""
    for i, rec in enumerate(items):
        loc = Loc(path, None, f"{prefix}[{i}]")
        if not isinstance(rec, dict):
            raise loc.error(f"expected a JSON object, got {type(rec).__name__}")
        yield loc, rec


def _table(path: str, kind: str, **_) -> Iterator[tuple[Loc, dict]]:
    tbl = read_table(path, kind)
    for i, rec in enumerate(tbl.to_pylist()):
        yield (Loc(path, i + 2) if kind == "csv" else Loc(path, None, f"row {i}")), rec


def read_table(path: str, kind: str):
    """A CSV or Parquet file as an Arrow table (CSV cells stay strings: a gold '007' is not 7)."""
    try:
        if kind == "parquet":
            return pq.read_table(path)
        delim = "\t" if path.lower().endswith(".tsv") else ","
        # utf-8-sig: a byte-order mark is not part of the first column's name (Arrow's reader skips it too)
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            header = next(csv.reader(fh, delimiter=delim), [])
        types = {c: pa.string() for c in header}
        return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim),
                             convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as e:
        raise StoplineError(f"cannot read it as {kind} ({str(e).splitlines()[0][:160]})", file=path) from None


# --- OpenAI-style chat logs ----------------------------------------------------------------------------------
def _text(content: Any) -> str | None:
    """Message content as text: a string, or a list of parts with 'text'."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _response_body(rec: dict) -> tuple[Any, str]:
    for path in ("response.body", "response", ""):
        body = rec if not path else _maybe(rec, path)
        if isinstance(body, dict) and isinstance(body.get("choices"), list):
            return body, (path + "." if path else "")
    return None, ""


def _maybe(rec: dict, path: str) -> Any:
    try:
        return get_path(rec, path)
    except KeyError:
        return None


def chat_fields(rec: dict, loc: Loc, question_field: str | None = None) -> tuple[str, str]:
    """(question, response text) of one OpenAI-style chat or completion log record.

    Shapes read: ``{"request": {...}, "response": {...}}`` (a proxy's log), OpenAI batch output
    (``response.body``), or a response alone (``{"choices": [...]}``, the question then from
    ``question_field``). The question is the last user message of ``request.messages`` (or ``messages``), or
    the request's ``prompt``. The response is ``choices[0].message`` (or a completion's ``choices[0].text``);
    its reasoning, from ``reasoning_content``, ``reasoning`` or inline ``<think>…</think>``, is kept as a
    ``<think>…</think>`` part before the answer."""
    body, at = _response_body(rec)
    if body is None:
        raise loc.error("no 'choices' list in the record, nor in its 'response' or 'response.body'", "choices",
                        hint="--format openai-chat reads OpenAI chat/completions responses")
    if not body["choices"]:
        raise loc.error("the response has no choices", f"{at}choices")
    choice = body["choices"][0]
    if not isinstance(choice, dict):
        raise loc.error("a choice must be an object", f"{at}choices.0")
    msg = choice.get("message")
    if isinstance(msg, dict):
        content = _text(msg.get("content")) or ""
        reasoning = msg.get("reasoning_content") or msg.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise loc.error(f"reasoning must be a string, got {type(reasoning).__name__}",
                            f"{at}choices.0.message.reasoning_content")
    elif isinstance(choice.get("text"), str):
        content, reasoning = choice["text"], None
    else:
        raise loc.error("no message (chat) or text (completion) in the first choice", f"{at}choices.0")
    if reasoning:
        content = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content}"
    if question_field:
        question = field(rec, question_field, loc, "question")
    else:
        req = rec.get("request") if isinstance(rec.get("request"), dict) else rec
        req = req.get("body", req) if isinstance(req.get("body"), dict) else req
        question = None
        msgs = req.get("messages")
        if isinstance(msgs, list):
            users = [_text(m.get("content")) for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
            question = users[-1] if users else None
        elif isinstance(req.get("prompt"), str):
            question = req["prompt"]
        if question is None:
            raise loc.error("no user message in request.messages (nor a prompt)", "request.messages",
                            hint="for responses logged alone, name the question with --question-field")
    if not isinstance(question, str):
        raise loc.error(f"question must be a string, got {type(question).__name__}", question_field or "request.messages")
    return question, content


def split_thinking(text: str) -> tuple[str, str] | None:
    """(thinking, answer part) of a thinking trace: the text before ``</think>`` and from it on; None when
    the text has no ``</think>``."""
    i = text.find(THINK_CLOSE)
    return (text[:i], text[i:]) if i >= 0 else None
