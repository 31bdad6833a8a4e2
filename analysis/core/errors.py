"""The project's own error type: every user-facing failure names what is wrong and where."""
from __future__ import annotations


class StoplineError(Exception):
    """A clear, user-facing error. The CLI prints it without a traceback and exits non-zero.

    ``where`` names the file / line / field (any that apply) so that the message points at the problem.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.message = message
        self.file, self.line, self.field, self.hint = file, line, field, hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (": ".join([", ".join(where), self.message]) if where else self.message)
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class MissingSignal(StoplineError):
    """A policy family needs a per-checkpoint signal that this run does not have."""


class PresetError(StoplineError):
    """A preset (JSON document or URL string) failed validation."""


class GoldConflict(StoplineError):
    """A question stored with one gold comes again with another (``index``: its place among the questions being
    written, for the writer to name its line)."""

    def __init__(self, message: str, *, index: int, question_id: str, **kw):
        self.index, self.question_id = index, question_id
        super().__init__(message, **kw)


def json_problem(e) -> str:
    """What a JSON parser (``json.JSONDecodeError`` or orjson's) found wrong in one line's record, placed by
    character within that line: the parser's own "line 2 column 1" counts lines inside the record, which
    beside the file's line number ("line 3: …") would read as another line of the file."""
    if isinstance(e.doc, (str, bytes)) and e.pos >= len(e.doc.rstrip()):
        return f"invalid JSON: the line ends inside a record ({e.msg})"
    return f"invalid JSON at character {e.pos + 1} of the line: {e.msg}"


def brief(value, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters; never raises, whatever the value
    (an integer past Python's 4,300-digit printing limit, a structure nested deeper than the recursion
    limit, an object whose repr fails)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except Exception:   # RecursionError, ValueError, or a broken __repr__: the message must still be made
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 1] + "…"
