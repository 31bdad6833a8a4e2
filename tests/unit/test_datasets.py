import json

import pandas as pd
import pytest

from analysis.core.answers import check, states_only_a_number
from analysis.ingest.datasets import load_dataset, RG_NUMBER_TASKS, stable_id
from analysis.core.errors import StoplineError


def test_reasoning_gym_is_seeded_and_stable():
    a = load_dataset("rg:gsm_symbolic", 5, seed=3)
    b = load_dataset("rg:gsm_symbolic", 5, seed=3)
    assert [q.id for q in a.questions] == [q.id for q in b.questions]
    assert a.answer_type == "number" and "Apache-2.0" in a.attribution
    assert all(q.gold and q.gold[0].lstrip("-").replace(".", "").isdigit() for q in a.questions)
    assert a.questions[0].id == stable_id(a.questions[0].text)
    c = load_dataset("rg:basic_arithmetic", 4)
    assert len(c) == 4 and "num_terms" in c.questions[0].meta


def test_reasoning_gym_tasks_are_scored_by_what_their_answers_are(cli):
    """Every rg task was scored as a number, so a grid's or a move's last number counted as the answer
    ('J2' scored as 2). Tasks whose answers are single numbers stay numbers; the others are text; the id can
    choose another type."""
    import reasoning_gym
    for task in sorted(RG_NUMBER_TASKS):     # each listed task answers with one number (the list's own rule)
        golds = [str(it["answer"]) for it in reasoning_gym.create_dataset(task, size=64, seed=0)]
        assert all(states_only_a_number(g) for g in golds), (task, [g for g in golds if not states_only_a_number(g)])
    for task in ("tsumego", "arc_1d", "spell_backward", "word_sorting", "base_conversion", "prime_factorization"):
        ds = load_dataset(f"rg:{task}", 16)
        assert task not in RG_NUMBER_TASKS and ds.answer_type == "text"
        assert any(not states_only_a_number(q.gold[0]) for q in ds.questions), task
        assert all(check(f"\\boxed{{{q.gold[0]}}}", q.gold, "text")["em"] == 1.0 for q in ds.questions), task
    tsu = load_dataset("rg:tsumego", 8)
    gold = tsu.questions[0].gold[0]                       # a move, such as 'E4'
    other = ("B" if gold[0] == "A" else "A") + gold[1:]   # another column, the same row: as numbers, both were 4
    assert check(f"\\boxed{{{other}}}", [gold], tsu.answer_type)["em"] == 0.0
    assert check(f"\\boxed{{{other}}}", [gold], "number")["em"] == 1.0
    assert load_dataset("rg:basic_arithmetic", 2).answer_type == "number"
    m = load_dataset("rg:simple_integration?answer_type=math", 2)
    assert m.answer_type == "math" and m.id == "rg:simple_integration?answer_type=math"
    assert all(q.answer_type == "math" for q in m.questions)
    with pytest.raises(StoplineError, match="must be one of number, math, text, choice, not 'words'"):
        load_dataset("rg:tsumego?answer_type=words", 2)
    code, _, err = cli("datasets", "rg:tsumego", "--answer-type", "number")
    assert code != 0 and "rg:tsumego?answer_type=text" in err
    code, out, _ = cli("datasets", "--rg-tasks", "--json")
    types = {t["id"]: t["answer_type"] for t in json.loads(out)}
    assert types["rg:gsm_symbolic"] == "number" and types["rg:tsumego"] == "text"


def test_gsm8k_and_nq_open(tmp_path):
    g = tmp_path / "gsm.jsonl"
    g.write_text(json.dumps({"question": "Q1?", "answer": "3 + 4 = 7\n#### 7"}) + "\n"
                 + json.dumps({"question": "Q2?", "answer": "so\n#### 1,250"}) + "\n")
    ds = load_dataset(f"gsm8k:{g}")
    assert [q.gold for q in ds.questions] == [["7"], ["1250"]] and ds.answer_type == "number"
    n = tmp_path / "nq.jsonl"
    n.write_text(json.dumps({"question": "who?", "answer": ["Ann", "Anne"]}) + "\n")
    ds = load_dataset(f"nq-open:{n}")
    assert ds.questions[0].gold == ["Ann", "Anne"] and ds.answer_type == "text"


def test_table_adapters_with_field_mapping(tmp_path):
    rows = [{"q": {"text": "What is 2+2?"}, "sol": "4", "cat": "easy"},
            {"q": {"text": "What is 3+3?"}, "sol": "6", "cat": "easy"}]
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(f"jsonl:{j}", question_field="q.text", gold_field="sol", meta_fields=["cat"])
    assert ds.questions[1].text == "What is 3+3?" and ds.questions[1].meta["cat"] == "easy"
    flat = pd.DataFrame([{"question": r["q"]["text"], "answer": r["sol"]} for r in rows])
    flat.to_csv(tmp_path / "d.csv", index=False)
    flat.to_parquet(tmp_path / "d.parquet")
    for kind in ("csv", "parquet"):
        ds = load_dataset(f"{kind}:{tmp_path / ('d.' + kind)}")
        assert [q.gold for q in ds.questions] == [["4"], ["6"]]


def test_bad_dataset_ids_and_files(tmp_path):
    with pytest.raises(StoplineError, match="unknown dataset prefix"):
        load_dataset("nope:x")
    with pytest.raises(StoplineError, match="expected PREFIX:ARG"):
        load_dataset("gsm8k")
    with pytest.raises(StoplineError, match="unknown reasoning-gym task"):
        load_dataset("rg:no_such_task", 2)
    with pytest.raises(StoplineError, match="file not found"):
        load_dataset(f"gsm8k:{tmp_path / 'missing.jsonl'}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q2", "answer": "no number"}\n')
    with pytest.raises(StoplineError) as e:
        load_dataset(f"gsm8k:{bad}")
    assert "line 2" in str(e.value) and "answer" in str(e.value) and "holds no number" in str(e.value)
    with pytest.raises(StoplineError, match="missing field"):
        load_dataset(f"jsonl:{bad}", question_field="prompt")


def test_hf_gives_a_clear_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(StoplineError) as e:
        load_dataset("hf:openai/gsm8k:main", 3)
    assert "could not load Hugging Face dataset" in str(e.value) and "jsonl:PATH" in str(e.value)


def test_hf_reads_a_split_through_a_field_mapping_kept_in_its_id(tmp_path, monkeypatch, cli):
    """hf: had fixed field names (question, answer) the user could not change, and its id held neither the
    split nor the mapping, so two readings of one dataset were one dataset. Read here from a local folder
    through the real `datasets` library (the hub is unreachable)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    d = tmp_path / "local"
    d.mkdir()
    for split, n in (("test", 4), ("train", 2)):
        (d / f"{split}.jsonl").write_text("".join(
            json.dumps({"problem": f"{split} {i} + 1?", "solution": f"so\n#### {i + 1}", "doc": {"q": f"{split} Q{i}"}})
            + "\n" for i in range(n)))
    ds = load_dataset(f"hf:{d}?question_field=problem&gold_field=solution", 3)
    assert ds.id == f"hf:{d}?question_field=problem&gold_field=solution" and len(ds) == 3
    assert [q.gold for q in ds.questions] == [["1"], ["2"], ["3"]] and ds.questions[0].text == "test 0 + 1?"
    tr = load_dataset(f"hf:{d}?split=train", question_field="doc.q", gold_field="solution")
    assert tr.id == f"hf:{d}?question_field=doc.q&gold_field=solution&split=train"
    assert [q.text for q in tr.questions] == ["train Q0", "train Q1"] and tr.questions[1].meta["hf_row"] == 2
    assert load_dataset(tr.id).questions[0].id == tr.questions[0].id     # the id alone reads them again
    with pytest.raises(StoplineError, match=r"hf:.* \[test\], line 1, field 'nope': missing field"):
        load_dataset(f"hf:{d}", 2, question_field="nope")
    with pytest.raises(StoplineError, match="Unknown split \"dev\"") as e:
        load_dataset(f"hf:{d}?split=dev", 2)
    assert "name the splits" in str(e.value)
    with pytest.raises(StoplineError, match="unknown option 'foo'.*\n.*split"):
        load_dataset(f"hf:{d}?foo=1", 2)
    with pytest.raises(StoplineError, match="--gold-field is given twice"):
        load_dataset(f"hf:{d}?gold_field=solution", 2, gold_field="answer")
    from analysis.ingest.datasets import dataset_file
    assert dataset_file(f"hf:{d}?split=train") == str(d) and dataset_file("hf:openai/gsm8k:main") is None


def test_reasoning_gym_options_in_the_id():
    from analysis.ingest.datasets import load_dataset
    ds = load_dataset("rg:basic_arithmetic?max_terms=3&max_digits=2", 20, seed=1)
    assert ds.id == "rg:basic_arithmetic?max_terms=3&max_digits=2" and len(ds) == 20
    assert all(q.meta["num_terms"] <= 3 and q.meta["num_digits"] <= 2 for q in ds.questions)
    with pytest.raises(StoplineError, match="bad configuration") as e:
        load_dataset("rg:basic_arithmetic?no_such_option=1", 2)
    assert "its options: min_terms, max_terms" in str(e.value)


def test_an_unknown_reasoning_gym_task_names_the_closest_and_the_command_that_lists_them(cli):
    """The error said "see reasoning_gym.factory.DATASETS", which no Stopline command showed."""
    with pytest.raises(StoplineError, match="unknown reasoning-gym task 'gsm_symbolik'; closest: gsm_symbolic") as e:
        load_dataset("rg:gsm_symbolik", 2)
    assert "python -m analysis datasets --rg-tasks" in str(e.value)
    with pytest.raises(StoplineError, match="closest: basic_arithmetic, "):
        load_dataset("rg:basic_arithmetc", 2)
    with pytest.raises(StoplineError, match="'no_such_task'; no task's name is close to it"):
        load_dataset("rg:no_such_task", 2)
    code, out, _ = cli("datasets")
    assert code == 0 and "python -m analysis datasets --rg-tasks" in out
    code, out, _ = cli("datasets", "--rg-tasks")
    assert code == 0 and "rg:gsm_symbolic" in out and "max_terms" in out and "seed" not in out
    code, out, _ = cli("datasets", "--rg-tasks", "--json")
    tasks = {t["id"]: t["options"] for t in json.loads(out)}
    assert len(tasks) > 100 and tasks["rg:gsm_symbolic"] == ["difficulty"]
    assert len(load_dataset(sorted(tasks)[0], 1)) == 1        # a listed id is one that loads


def test_a_tables_field_mapping_is_part_of_its_id(tmp_path):
    """run could not be given a mapping; now the mapping is in the dataset's id, so a run's identity holds it,
    two mappings of one file keep their questions apart, and the id alone loads the same questions again."""
    from analysis.ingest.datasets import dataset_file
    rows = [{"q": {"text": "What is 2+2?"}, "sol": "4", "alt": "four", "n": 7},
            {"q": {"text": "What is 3+3?"}, "sol": "6", "alt": "six", "n": 8}]
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_dataset(f"jsonl:{j}", question_field="q.text", gold_field="sol", id_field="n")
    assert ds.id == f"jsonl:{j}?question_field=q.text&gold_field=sol&id_field=n"
    again = load_dataset(ds.id)
    assert again.id == ds.id and [(q.id, q.text, q.gold) for q in again.questions] == [
        ("7", "What is 2+2?", ["4"]), ("8", "What is 3+3?", ["6"])]
    text = load_dataset(f"jsonl:{j}", question_field="q.text", gold_field="alt", answer_type="text")
    assert text.id == f"jsonl:{j}?question_field=q.text&gold_field=alt&answer_type=text" and text.answer_type == "text"
    plain = tmp_path / "p.jsonl"
    plain.write_text(json.dumps({"question": "1+1?", "answer": "2"}))
    assert load_dataset(f"jsonl:{plain}", answer_type="number", question_field="question").id == f"jsonl:{plain}"
    assert dataset_file(ds.id) == str(j) and dataset_file(f"gsm8k:{j}") == str(j)
    assert dataset_file("rg:basic_arithmetic") is None and dataset_file("hf:x") is None
    for dataset_id, opts, match in [
        (f"jsonl:{j}?gold=sol", {}, "unknown option 'gold'"),
        (f"jsonl:{j}?gold_field=sol", {"gold_field": "alt"}, "--gold-field is given twice"),
        (f"jsonl:{j}", {"question_field": "q.text", "answer_type": "words"}, "--answer-type must be one of"),
        (f"jsonl:{j}", {"gold_field": " "}, "--gold-field is empty"),
        (f"jsonl:{j}", {"question_field": "q.txt"}, "field 'q.txt': missing field"),
        ("rg:basic_arithmetic", {"answer_type": "text"}, "a field mapping is for jsonl:, csv:, parquet:, hf: datasets"),
        (f"gsm8k:{j}", {"gold_field": "sol"}, "not gsm8k:"),
    ]:
        with pytest.raises(StoplineError, match=match):
            load_dataset(dataset_id, **opts)


def test_a_jobs_dataset_file_is_the_one_its_mapping_reads(tmp_path, monkeypatch):
    """The Runs page's check of a job's dataset file reads the path as load_dataset does: a mapping in the id
    cannot walk the checked path into the allowed folder while the run reads another file."""
    from analysis.production import jobs
    ok = tmp_path / "datasets"
    monkeypatch.setenv("STOPLINE_DATASET_DIRS", str(ok))
    with pytest.raises(StoplineError, match="must be inside"):
        jobs.check_dataset(f"jsonl:/etc/passwd?question_field=/../../..{ok}/x")
    jobs.check_dataset(f"jsonl:{ok}/q.jsonl?gold_field=sol")
