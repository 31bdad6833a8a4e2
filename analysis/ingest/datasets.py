"""Dataset adapters, addressed by id.

| id | source |
|---|---|
| ``rg:<task>`` | reasoning-gym generator (offline, seeded): ``rg:gsm_symbolic``, ``rg:basic_arithmetic`` |
| ``gsm8k:PATH`` | GSM8K JSONL: ``question`` and ``answer`` whose last line is ``#### <number>`` |
| ``nq-open:PATH`` | NQ-open JSONL: ``question`` and ``answer`` = list of aliases |
| ``jsonl:PATH`` / ``csv:PATH`` / ``parquet:PATH`` | any table, with a field mapping (``MAPPING``), kept in the id |
| ``hf:NAME[:CONFIG]`` | Hugging Face ``datasets`` (the hub, or a local folder), with a split and a field mapping |

A table's mapping, when it differs from the defaults, is part of its dataset's id
(``jsonl:PATH?gold_field=sol&answer_type=text``): a run's identity holds it, and two mappings of one file
store their questions apart.

Every question gets a stable id derived from its text, so the same question keeps its id across runs,
orderings and machines.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlencode

import pandas as pd

from analysis.core.answers import (ANSWER_TYPES, CHOICE, MATH, NUMBER, TEXT, extract_number_text, is_number, math_parses,
                      normalize_gold, normalize_number)
from analysis.core.errors import json_problem, StoplineError
from analysis.core.registry import Registry


@dataclass
class Question:
    id: str
    text: str
    gold: list[str]
    answer_type: str
    meta: dict = field(default_factory=dict)


@dataclass
class Dataset:
    id: str
    answer_type: str
    questions: list[Question]
    description: str = ""
    attribution: str = ""

    def __len__(self) -> int:
        return len(self.questions)


def stable_id(text: str) -> str:
    return "q" + hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:12]


def assign_ids(questions: list[Question]) -> list[Question]:
    """Give questions without an id one from their text; a repeated text gets a suffix, in order."""
    seen: dict[str, int] = {}
    for q in questions:
        base = q.id or stable_id(q.text)
        n = seen.get(base, 0)
        seen[base] = n + 1
        q.id = base if n == 0 else f"{base}-{n}"
    return questions


BOM = b"\xef\xbb\xbf"      # a UTF-8 byte-order mark, which some editors write first: skipped where a file starts


def check_file(path: str) -> None:
    """An input file that exists and is a file (a folder gets its own message, not "not found")."""
    p = Path(path)
    if p.is_dir():
        raise StoplineError("is a directory, not a file", file=path, hint="name a file inside it")
    if not p.is_file():
        raise StoplineError("file not found", file=path)


def question_problem(text: Any) -> str | None:
    """What is wrong with a question's text (None: nothing), for an error naming the record."""
    if text is None:
        return "question is missing (null)"
    if not isinstance(text, str):
        return f"question must be text, got {type(text).__name__}"
    if not text.strip():
        return "question is blank (empty or only white space)"
    return None


def get_path(obj: Any, path: str) -> Any:
    """Value at a dotted path (``outputs.solution``, ``resps.0.0``); KeyError names the missing part."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                raise KeyError(part)
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                raise KeyError(part) from None
        else:
            raise KeyError(part)
    return cur


def as_gold_list(value: Any, answer_type: str) -> list[str]:
    """Gold as a list of alias strings; numbers become their string form."""
    if isinstance(value, (list, tuple)):
        out = [str(v) for v in value if v is not None and str(v).strip()]
    elif value is None:
        out = []
    else:
        out = [str(value)]
    return out


def check_gold(gold: list[str], answer_type: str) -> str | None:
    """Why this gold is unusable, or None: a number gold must state a number, a math gold must parse as
    LaTeX (math-verify), a choice gold must be a letter."""
    if not gold:
        return "empty gold answer"
    for g, norm in zip(gold, normalize_gold(gold, answer_type)):
        if answer_type == NUMBER and not is_number(norm):
            return (f"gold answer {g[:60]!r} holds no number (an expression, or a LaTeX answer such as "
                    "\\sqrt{2}: use the answer type 'math')")
        if answer_type == MATH and not math_parses(norm):
            return f"gold answer {g[:60]!r} is not a LaTeX answer math-verify can parse"
        if answer_type == CHOICE and not norm:
            return f"gold answer {g[:60]!r} is not a choice letter (A, B, C, ...)"
    return None


# --- adapters ---------------------------------------------------------------------------------------------
def _rg_config(task: str, query: str) -> dict:
    """Task options from the id, ``rg:basic_arithmetic?max_terms=3&max_digits=2``: numbers, true/false, text."""
    out: dict[str, Any] = {}
    for k, v in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if not k.isidentifier():
            raise StoplineError(f"bad option {k!r} in dataset id rg:{task}")
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
    return out


RG_LIST = "python -m analysis datasets --rg-tasks"      # the command that lists the reasoning-gym tasks

# The reasoning-gym tasks whose answers are one number each (all of 64 questions at seed 0, reasoning-gym 0.1.19;
# tests/unit/test_datasets.py checks it): scored as numbers. Every other task answers with words, lists, grids,
# moves or expressions, scored as short text (exact match after normalisation): scored as numbers, a grid's or a
# move's last number would count as the answer. ``rg:TASK?answer_type=math`` chooses otherwise for one id.
RG_NUMBER_TASKS = frozenset({
    "aiw", "basic_arithmetic", "binary_alternation", "chain_sum", "circuit_logic", "coin_flip", "count_bits",
    "count_primes", "decimal_arithmetic", "decimal_chain_sum", "dice", "fraction_simplification", "gcd",
    "gsm_symbolic", "largest_island", "lcm", "leg_counting", "letter_counting", "maze", "number_format",
    "number_sequence", "power_function", "products", "rectangle_count", "rotten_oranges", "self_reference",
    "simple_equations", "simple_geometry"})


def rg_answer_type(task: str) -> str:
    """How a reasoning-gym task's answers are scored unless its id says otherwise."""
    return NUMBER if task in RG_NUMBER_TASKS else TEXT


def reasoning_gym_tasks() -> dict[str, list[str]]:
    """The reasoning-gym tasks, by name, with the options each takes in its id (``rg:TASK?OPTION=VALUE``): the
    fields of its config class, less seed and size (the run's --seed and --limit)."""
    import dataclasses
    try:
        from reasoning_gym.factory import DATASETS as RG   # lazy: a heavy library, only for rg: ids
    except ImportError as e:  # pragma: no cover - it is a pinned requirement
        raise StoplineError("reasoning-gym is not installed", hint="pip install -r requirements.txt") from e
    return {name: [f.name for f in dataclasses.fields(config) if f.name not in ("seed", "size")]
            for name, (_, config) in sorted(RG.items())}


def _reasoning_gym(task: str, limit: int | None, seed: int, **_: Any) -> Dataset:
    try:
        import reasoning_gym        # lazy: a heavy library (its task registry), only for rg: ids
    except ImportError as e:
        raise StoplineError(f"rg: datasets need the reasoning-gym package ({e})",
                            hint="pip install -r requirements.txt") from None
    size = limit or 200
    name, _, query = task.partition("?")
    config = _rg_config(task, query)
    answer_type = str(config.pop("answer_type", rg_answer_type(name)))
    if answer_type not in ANSWER_TYPES:
        raise StoplineError(f"answer_type in dataset id rg:{task} must be one of {', '.join(ANSWER_TYPES)}, "
                            f"not {answer_type!r}")
    tasks = reasoning_gym_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=3, cutoff=0.6)
        raise StoplineError(f"unknown reasoning-gym task {name!r}; "
                            + (f"closest: {', '.join(close)}" if close else "no task's name is close to it"),
                            hint=f"{RG_LIST} lists the {len(tasks)} tasks and their options")
    try:
        ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    except Exception as e:
        raise StoplineError(f"bad configuration {config} for reasoning-gym task {name!r} ({e})",
                            hint=f"its options: {', '.join(tasks[name]) or 'none'} ({RG_LIST})") from None
    qs = []
    for i, item in enumerate(ds):
        meta = {k: v for k, v in (item.get("metadata") or {}).items()
                if isinstance(v, (int, float, str, bool)) and k not in ("answer_cot",)}
        meta["rg_index"] = i
        if task == "gsm_symbolic":
            meta.setdefault("difficulty", (item.get("metadata") or {}).get("difficulty"))
        qs.append(Question("", item["question"], [str(item["answer"])], answer_type, meta))
    return Dataset(f"rg:{task}", answer_type, assign_ids(qs),
                   description=f"reasoning-gym '{name}'{f' ({query})' if query else ''}, {size} questions, seed {seed}",
                   attribution="Generated by reasoning-gym (open-thought/reasoning-gym), Apache-2.0.")


def _read_jsonl_rows(path: str) -> Iterable[tuple[int, dict]]:
    check_file(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise StoplineError(f"not UTF-8 (byte {e.start})", file=path, line=lineno) from None
            except json.JSONDecodeError as e:
                raise StoplineError(json_problem(e), file=path, line=lineno) from None
            except (ValueError, RecursionError) as e:     # a number past Python's digit limit; nested too deeply
                raise StoplineError(f"invalid JSON ({str(e).split(';')[0][:80]})", file=path, line=lineno) from None


def _table_rows(kind: str, path: str) -> Iterable[tuple[int, dict]]:
    if kind == "jsonl":
        yield from _read_jsonl_rows(path)
        return
    check_file(path)
    try:
        df = pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as e:
        raise StoplineError(f"cannot read {kind.upper()} ({e})", file=path) from None
    for i, rec in enumerate(df.to_dict(orient="records")):
        yield i + 2 if kind == "csv" else i + 1, rec  # CSV line numbers count the header


# a table's field mapping: the options of the jsonl:, csv: and parquet: adapters (and of `run` and `import`,
# as --question-field, --gold-field, --id-field, --answer-type), with their defaults
MAPPING = {"question_field": "question", "gold_field": "answer", "id_field": None, "answer_type": NUMBER}


def _mapping_flags(keys: Iterable[str]) -> str:
    return ", ".join("--" + k.replace("_", "-") for k in keys)


def split_mapping(dataset_id: str, options: dict = MAPPING) -> tuple[str, dict]:
    """(the file a table's dataset id reads, the field mapping its id asks for): ``jsonl:d.jsonl?gold_field=sol``
    -> ``('d.jsonl', {'gold_field': 'sol'})``. A path that exists as it is, or whose ``?`` is not followed by
    ``key=value`` pairs, is all path; a key that is not one of ``options`` is refused."""
    prefix, _, arg = dataset_id.partition(":")
    path, q, query = arg.rpartition("?")
    try:
        whole = Path(arg).is_file()
    except OSError:             # a name the system refuses (too long …): not a file as it is
        whole = False
    if not q or whole:
        return arg, {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return arg, {}
    unknown = [k for k, _ in pairs if k not in options]
    if unknown:
        raise StoplineError(f"unknown option {unknown[0]!r} in dataset id {dataset_id}",
                            hint=f"its options: {', '.join(options)} "
                                 f"(or {_mapping_flags(k for k in options if k in MAPPING)})")
    return path, dict(pairs)


def mapped_id(prefix: str, path: str, mapping: dict, options: dict = MAPPING) -> str:
    """The dataset id of a table read with this mapping: the options that differ from the defaults, in
    ``options``' order, after a ``?`` (none: the plain ``PREFIX:PATH``). Two mappings of one file are two
    datasets: their questions (text, gold, answer type) are stored apart."""
    changed = [(k, mapping[k]) for k in options if mapping.get(k) not in (None, options[k])]
    return f"{prefix}:{path}" + (f"?{urlencode(changed, safe='./')}" if changed else "")


def _merged(prefix: str, arg: str, given: dict, options: dict = MAPPING) -> tuple[str, dict]:
    """(what the id reads, its options): those in the id and those given (flags), which must agree."""
    path, in_id = split_mapping(f"{prefix}:{arg}", options)
    for k, v in in_id.items():
        if given.get(k) not in (None, v):
            raise StoplineError(f"{_mapping_flags([k])} is given twice: {v!r} in the dataset id, {given[k]!r} "
                                "as an option", hint="give it once")
    return path, {**{k: v for k, v in given.items() if v is not None}, **in_id}


def _table(kind: str, arg: str, limit: int | None, **options: Any) -> Dataset:
    """A jsonl:, csv: or parquet: dataset: the mapping in its id and the one given as options, which must agree."""
    path, mapping = _merged(kind, arg, options)
    return _from_table(kind, path, limit, **mapping)


def _from_table(kind: str, path: str, limit: int | None, **mapping: Any) -> Dataset:
    return _from_records(_table_rows(kind, path), path, limit, id_prefix=kind, **mapping)


def _from_records(rows: Iterable[tuple[int, Any]], path: str, limit: int | None, question_field: str = "question",
                  gold_field: str = "answer", id_field: str | None = None, answer_type: str = NUMBER,
                  meta_fields: list[str] | None = None, dataset_id: str | None = None, id_prefix: str = "",
                  index_key: str = "line", **_: Any) -> Dataset:
    """Questions from numbered records (a file's lines, a hub dataset's rows), read through a field mapping;
    a record that does not fit is named by ``path``, its number and the field."""
    if answer_type not in ANSWER_TYPES:
        raise StoplineError(f"--answer-type must be one of {', '.join(ANSWER_TYPES)}, not {answer_type!r}")
    for flag, name in (("--question-field", question_field), ("--gold-field", gold_field), ("--id-field", id_field)):
        if name is not None and not str(name).strip():
            raise StoplineError(f"{flag} is empty", hint="a field's name, or a dotted path such as doc.question")
    qs = []
    for lineno, rec in rows:
        if not isinstance(rec, dict):
            raise StoplineError("expected a JSON object", file=path, line=lineno)
        try:
            text = get_path(rec, question_field)
        except KeyError:
            raise StoplineError("missing field", file=path, line=lineno, field=question_field) from None
        if (problem := question_problem(text)) is not None:
            raise StoplineError(problem, file=path, line=lineno, field=question_field)
        try:
            gold = as_gold_list(get_path(rec, gold_field), answer_type)
        except KeyError:
            raise StoplineError("missing field", file=path, line=lineno, field=gold_field) from None
        bad = check_gold(gold, answer_type)
        if bad:
            raise StoplineError(bad, file=path, line=lineno, field=gold_field)
        qid = ""
        if id_field:
            try:
                qid = str(get_path(rec, id_field))
            except KeyError:
                raise StoplineError("missing field", file=path, line=lineno, field=id_field) from None
        meta = {index_key: lineno}
        for mf in meta_fields or []:
            try:
                meta[mf] = get_path(rec, mf)
            except KeyError:
                pass
        qs.append(Question(qid, text, gold, answer_type, meta))
        if limit and len(qs) >= limit:
            break
    if not qs:
        raise StoplineError("no questions found (empty file?)", file=path)
    mapping = {"question_field": question_field, "gold_field": gold_field, "id_field": id_field,
               "answer_type": answer_type}
    return Dataset(dataset_id or mapped_id(id_prefix, path, mapping), answer_type, assign_ids(qs),
                   description=f"{len(qs)} questions from {path}")


def _gsm8k(path: str, limit: int | None, **kw: Any) -> Dataset:
    ds = _from_table("jsonl", path, limit, answer_type=NUMBER, dataset_id=f"gsm8k:{path}")
    ds.description = f"GSM8K ({len(ds)} questions from {path})"
    ds.attribution = "GSM8K (openai/grade-school-math), MIT."
    for q in ds.questions:  # keep just the final number as gold; the worked solution goes to meta
        q.meta["solution"] = q.gold[0]
        q.gold = [normalize_number(extract_number_text(q.gold[0]))]
        q.meta["n_steps"] = q.meta["solution"].count("\n")
    return ds


def _nq_open(path: str, limit: int | None, **kw: Any) -> Dataset:
    ds = _from_table("jsonl", path, limit, answer_type=TEXT, dataset_id=f"nq-open:{path}")
    ds.description = f"NQ-open ({len(ds)} questions from {path})"
    ds.attribution = "NQ-open (google-research-datasets/natural-questions), CC BY-SA 3.0."
    return ds


HF_OPTIONS = {**MAPPING, "split": "test"}      # an hf: id's options: the field mapping and the split


def _hf(arg: str, limit: int | None, **options: Any) -> Dataset:
    """``hf:NAME[:CONFIG][?split=train&gold_field=...]``: a Hugging Face dataset (a hub id, or a local folder
    of data files), read through the same field mapping as a table; the split and the mapping are part of
    its id when they differ from the defaults."""
    try:
        import datasets as hf_datasets      # lazy: a heavy library, only for hf: ids
    except ImportError:
        raise StoplineError("the 'datasets' package is needed for hf: ids", hint="pip install datasets") from None
    spec, opts = _merged("hf", arg, options, HF_OPTIONS)
    split = opts.pop("split", HF_OPTIONS["split"])
    name, config = spec, None
    if ":" in spec:
        name, config = spec.split(":", 1)
    try:
        hd = hf_datasets.load_dataset(name, config, split=split)
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        cause = e.__cause__ if isinstance(e, hf_datasets.exceptions.DatasetGenerationError) and e.__cause__ else e
        local = Path(name).is_dir()
        raise StoplineError(
            f"could not load Hugging Face dataset {spec!r} (split {split!r}): {type(cause).__name__}: "
            f"{str(cause)[:300]}",
            hint=("the folder's data files do not make that split (test.jsonl, train.parquet … name the splits)"
                  if local else "the Hugging Face hub is unreachable from here"
                  + (" (offline mode is set)" if offline else "")
                  + "; download the data elsewhere and use jsonl:PATH, csv:PATH or parquet:PATH")) from None
    where = f"hf:{spec} [{split}]"
    ds = _from_records(enumerate(hd, 1), where, limit, index_key="hf_row",
                       dataset_id=mapped_id("hf", spec, {**opts, "split": split}, HF_OPTIONS), **opts)
    if ds.answer_type == NUMBER:         # keep the final number as gold (a GSM8K solution ends in '#### 72')
        for q in ds.questions:
            q.gold = [normalize_number(extract_number_text(g)) for g in q.gold]
    ds.description = f"Hugging Face {spec} [{split}], {len(ds)} questions"
    return ds


@dataclass(frozen=True)
class DatasetSource:
    name: str                                   # the prefix of a dataset id: PREFIX:ARG
    load: Callable[..., Dataset]                # load(arg, limit, **options)
    about: str
    file: bool = False                          # ARG is a file's path (its mapping, if any, split off)
    mapping: bool = False                       # takes a field mapping (MAPPING), recorded in its id


DATASETS: Registry[DatasetSource] = Registry("dataset prefix", "prefixes")
for _src in (
    DatasetSource("rg", lambda arg, limit, seed=42, **kw: _reasoning_gym(arg, limit, seed, **kw),
                  "reasoning-gym task, generated offline with a seed (e.g. rg:gsm_symbolic, rg:basic_arithmetic)"),
    DatasetSource("gsm8k", lambda arg, limit, **kw: _gsm8k(arg, limit, **kw), "GSM8K JSONL file; gold after '####'",
                  file=True),
    DatasetSource("nq-open", lambda arg, limit, **kw: _nq_open(arg, limit, **kw),
                  "NQ-open JSONL file; gold is a list of aliases", file=True),
    *(DatasetSource(kind, lambda arg, limit, kind=kind, **kw: _table(kind, arg, limit, **kw),
                    f"any {name}, with a field mapping (--question-field, --gold-field, --id-field, --answer-type)",
                    file=True, mapping=True) for kind, name in (("jsonl", "JSONL"), ("csv", "CSV"),
                                                                 ("parquet", "Parquet"))),
    DatasetSource("hf", lambda arg, limit, **kw: _hf(arg, limit, **kw),
                  "Hugging Face datasets (the hub, or a local folder): hf:NAME[:CONFIG]?split=train&gold_field=...",
                  mapping=True),
):
    DATASETS.add(_src.name, _src)


def load_dataset(dataset_id: str, limit: int | None = None, **options: Any) -> Dataset:
    """Resolve a dataset id to its questions. Options go to the adapter (seed, field names, answer_type)."""
    if ":" not in dataset_id:
        raise StoplineError(f"unknown dataset id {dataset_id!r}: expected PREFIX:ARG",
                            hint="prefixes: " + ", ".join(DATASETS))
    prefix, arg = dataset_id.split(":", 1)
    source = DATASETS[prefix]
    if not arg:
        raise StoplineError(f"dataset id {dataset_id!r} names no task or file")
    given = [k for k in MAPPING if options.get(k) is not None]
    if given and not source.mapping:
        takers = ", ".join(s.name + ":" for s in DATASETS.values() if s.mapping)
        hint = (f"{prefix}: datasets read their own fields" if source.file else
                f"an rg: task takes its answer type in its id: {dataset_id}?answer_type=text"
                if prefix == "rg" and given == ["answer_type"] else None)
        raise StoplineError(f"{_mapping_flags(given)}: a field mapping is for {takers} datasets, not {prefix}:",
                            hint=hint)
    return source.load(arg, limit, **options)


def dataset_file(dataset_id: str) -> str | None:
    """The file a dataset id reads (its mapping split off), or None where it reads none (rg:, an hf: hub id); an
    hf: id that names a local folder reads that folder."""
    prefix, sep, arg = dataset_id.partition(":")
    source = DATASETS[prefix] if sep and prefix in DATASETS else None
    if source is not None and prefix == "hf":   # a hub id, or a local folder (which `datasets` tries first)
        name = split_mapping(dataset_id, HF_OPTIONS)[0].split(":", 1)[0]
        local = name.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(name))
        return name if local else None
    if source is None or not source.file:
        return None
    return split_mapping(dataset_id)[0] if source.mapping else arg
