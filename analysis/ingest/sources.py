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
import itertools
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
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


PER_VALUE = 16      # bytes a value counts in a file's decoded size besides its own (offsets, Python's objects)


class Limits(NamedTuple):
    """Caps on what reading one file may make, for files from people the reader does not vouch for (the
    dashboard's uploads; the command line reads its user's own files whole). ``records``: records (a table's
    rows); ``decoded_mb``: a CSV or Parquet file's data once decoded (Arrow's bytes of its values with every
    dictionary expanded, plus ``PER_VALUE`` bytes a value), checked before any Python object is made: a small
    Parquet file can hold a dictionary-encoded value repeated on every row, or pages that decompress a
    thousandfold. ``what`` names such a file in the error ("a file imported from the dashboard"); ``hint`` says
    the way round a cap."""
    records: int
    decoded_mb: float
    what: str = "a file read here"
    hint: str | None = None

    def refuse(self, path: str, found: str, cap: str) -> StoplineError:
        return StoplineError(f"{found}; {self.what} may hold at most {cap}", file=path, hint=self.hint)

    def check_records(self, path: str, n: int, noun: str = "records", more: bool = False) -> None:
        """``more``: the file was read only as far as ``n`` (one past the cap)."""
        if n > self.records:
            raise self.refuse(path, f"holds {'more than ' + format(self.records, ',') if more else format(n, ',')} "
                                    f"{noun}", f"{self.records:,}")

    def check_decoded(self, path: str, nbytes: int, at_least: bool = False) -> None:
        if nbytes > self.decoded_mb * 1024 * 1024:
            raise self.refuse(path, f"holds {'at least ' if at_least else ''}{_mb(nbytes)} of data once decoded "
                                    f"({_mb(os.path.getsize(path))} on disk)", f"{self.decoded_mb:g} MB")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1024 / 1024:,.1f} MB" if nbytes >= 100 * 1024 else f"{nbytes / 1024:.0f} KB"


def _start(path: str, kind: str | None, records: str | None, max_line_mb: float) -> str:
    """The checks every read starts with; returns the file's kind."""
    check_file(path)
    if max_line_mb <= 0:
        raise StoplineError(f"--max-line-mb must be positive, not {max_line_mb:g}")
    kind = kind_of(path, kind)
    if records and kind != "json":
        raise StoplineError(f"--records applies to JSON documents, and this is read as {kind}", file=path)
    return kind


def read(path: str, kind: str | None = None, records: str | None = None, max_line_mb: float = 16,
         limits: Limits | None = None) -> tuple[list[tuple[Loc, dict]], str]:
    """Every record of the file with its location, and the file's sha256. Raises StoplineError naming the
    file (and line or item) for anything unreadable, or past ``limits``; reads the whole file before returning."""
    kind = _start(path, kind, records, max_line_mb)
    out = list({"jsonl": _jsonl, "json": _json_doc, "csv": _table, "parquet": _table}[kind](
        path, kind=kind, records=records, max_line_mb=max_line_mb, limits=limits))
    if not out:
        raise StoplineError("no records (the file is empty)", file=path)
    return out, sha256(path)


def head(path: str, kind: str | None = None, records: str | None = None, max_line_mb: float = 16, n: int = 5,
         limits: Limits | None = None) -> tuple[list[tuple[Loc, dict]], int]:
    """The first ``n`` records and how many the file holds, without reading the rest into memory (a preview):
    a JSONL file's later lines are counted, not parsed; a Parquet file's count is in its footer and only its
    first rows are decoded. ``limits`` are checked where that costs no more: the record count, and a Parquet
    file's size before decoding; the import checks the rest."""
    kind = _start(path, kind, records, max_line_mb)
    if kind == "jsonl":
        first = list(itertools.islice(_jsonl(path, max_line_mb), n))
        count = sum(1 for _ in _lines(path, max_line_mb))
        if limits:
            limits.check_records(path, count)
    elif kind == "json":
        items = list(_json_doc(path, records, limits))
        first, count = items[:n], len(items)
    elif kind == "csv":
        tbl = read_table(path, kind, limits)
        first, count = list(_rows(path, kind, tbl.slice(0, n))), tbl.num_rows
    else:
        with _arrow_errors(path, kind):
            pf = _parquet_file(path, limits)
            batch = next(pf.iter_batches(batch_size=max(n, 1)), None)
        if batch is not None and limits:
            limits.check_decoded(path, _decoded_bytes(batch))
        first = list(_rows(path, kind, pa.Table.from_batches([batch]))) if batch is not None else []
        count = pf.metadata.num_rows
    if not count:
        raise StoplineError("no records (the file is empty)", file=path)
    return first, count


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _lines(path: str, max_line_mb: float) -> Iterator[tuple[Loc, bytes]]:
    """Each non-blank line of a JSONL file (a byte-order mark taken off the first), with its location; a line
    over ``max_line_mb`` is refused before it is read whole."""
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
            if raw.strip():
                yield loc, raw


def _jsonl(path: str, max_line_mb: float, limits: Limits | None = None, **_) -> Iterator[tuple[Loc, dict]]:
    loads, errors = _loads()
    for n, (loc, raw) in enumerate(_lines(path, max_line_mb), 1):
        if limits and n > limits.records:
            limits.check_records(path, n, more=True)
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


def _json_doc(path: str, records: str | None, limits: Limits | None = None, **_) -> Iterator[tuple[Loc, dict]]:
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
    if limits:
        limits.check_records(path, len(items))
    prefix = records or ""
    for i, rec in enumerate(items):
        loc = Loc(path, None, f"{prefix}[{i}]")
        if not isinstance(rec, dict):
            raise loc.error(f"expected a JSON object, got {type(rec).__name__}")
        yield loc, rec


def _table(path: str, kind: str, limits: Limits | None = None, **_) -> Iterator[tuple[Loc, dict]]:
    return _rows(path, kind, _checked_table(path, kind, limits))     # (dictionaries expand as rows are made)


def _rows(path: str, kind: str, tbl: pa.Table) -> Iterator[tuple[Loc, dict]]:
    for i, rec in enumerate(tbl.to_pylist()):
        yield (Loc(path, i + 2) if kind == "csv" else Loc(path, None, f"row {i}")), rec


@contextmanager
def _arrow_errors(path: str, kind: str):
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raise StoplineError(f"cannot read it as {kind} ({str(e).splitlines()[0][:160]})", file=path) from None


def read_table(path: str, kind: str, limits: Limits | None = None) -> pa.Table:
    """A CSV or Parquet file as an Arrow table (CSV cells stay strings: a gold '007' is not 7). With
    ``limits``, its rows and its size once decoded are checked first (a Parquet file's string columns read as
    dictionaries and measured before they are expanded)."""
    tbl = _checked_table(path, kind, limits)
    return tbl if limits is None else _plain(tbl)


def _checked_table(path: str, kind: str, limits: Limits | None) -> pa.Table:
    """``read_table`` before a capped Parquet file's dictionaries are expanded."""
    with _arrow_errors(path, kind):
        if kind == "parquet":
            if limits is None:
                return pq.read_table(path)
            tbl = _parquet_file(path, limits).read()
        else:
            delim = "\t" if path.lower().endswith(".tsv") else ","
            # utf-8-sig: a byte-order mark is not part of the first column's name (Arrow's reader skips it too)
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
                header = next(csv.reader(fh, delimiter=delim), [])
            types = {c: pa.string() for c in header}
            tbl = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim),
                                convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False))
            if limits is None:
                return tbl
            limits.check_records(path, tbl.num_rows, "rows")
        limits.check_decoded(path, _decoded_bytes(tbl))
        return tbl


def _parquet_file(path: str, limits: Limits | None) -> pq.ParquetFile:
    """A Parquet file opened (its footer read). With ``limits``: its rows, and what reading it holds before
    anything is decoded (its pages uncompressed, and ``PER_VALUE`` bytes a value), checked on the footer's
    figures; its string columns are then read as dictionaries, so a value repeated on every row is held once
    until ``_decoded_bytes`` has measured what expanding it would make."""
    if limits is None:
        return pq.ParquetFile(path)
    md = pq.read_metadata(path)
    limits.check_records(path, md.num_rows, "rows")
    cols = [md.schema.column(j) for j in range(md.num_columns)]
    held = 0
    for i in range(md.num_row_groups):
        for j, col in enumerate(cols):
            c = md.row_group(i).column(j)      # a fixed-length value decodes to its length, however it is encoded
            fixed = (col.length or 0) * c.num_values if col.physical_type == "FIXED_LEN_BYTE_ARRAY" else 0
            held += max(c.total_uncompressed_size, fixed) + PER_VALUE * c.num_values
    limits.check_decoded(path, held, at_least=True)
    strings = [col.path for col in cols if col.physical_type == "BYTE_ARRAY"]
    return pq.ParquetFile(path, read_dictionary=strings)


def _decoded_bytes(data: pa.Table | pa.RecordBatch | pa.Array | pa.ChunkedArray) -> int:
    """What ``data`` holds once its dictionaries are expanded (each dictionary value counted as often as it is
    used), plus ``PER_VALUE`` bytes a value, nested ones included; nothing is expanded to measure it."""
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return sum(_decoded_bytes(c) for c in data.columns)
    if isinstance(data, pa.ChunkedArray):
        return sum(_decoded_bytes(c) for c in data.chunks)
    t, n = data.type, PER_VALUE * len(data)
    if pa.types.is_dictionary(t):           # (read_dictionary makes them of strings and binaries only)
        return n + int(pc.sum(pc.binary_length(data.dictionary).take(data.indices)).as_py() or 0)
    if pa.types.is_map(t):
        return n + _decoded_bytes(data.keys) + _decoded_bytes(data.items)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return n + _decoded_bytes(data.flatten())
    if pa.types.is_struct(t):
        return n + sum(_decoded_bytes(c) for c in data.flatten())
    return n + data.nbytes


def _plain(tbl: pa.Table) -> pa.Table:
    """The table with its dictionary-encoded columns (nested ones too) expanded to plain values."""
    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_dictionary(t):
            return t.value_type
        if pa.types.is_map(t):
            return pa.map_(field_of(t.key_field), field_of(t.item_field))
        if pa.types.is_list(t):
            return pa.list_(field_of(t.value_field))
        if pa.types.is_large_list(t):
            return pa.large_list(field_of(t.value_field))
        if pa.types.is_fixed_size_list(t):
            return pa.list_(field_of(t.value_field), t.list_size)
        if pa.types.is_struct(t):
            return pa.struct([field_of(f) for f in t])
        return t

    def field_of(f: pa.Field) -> pa.Field:
        return pa.field(f.name, plain(f.type), f.nullable, f.metadata)
    schema = pa.schema([field_of(f) for f in tbl.schema], metadata=tbl.schema.metadata)
    return tbl if schema.equals(tbl.schema) else tbl.cast(schema)


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
