"""The backend on tiny random-weight models built here: end to end, probe equivalence, kill and resume."""
import json
import os

import numpy as np
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from analysis.backend.decode import generate_batch

from analysis.backend.probe import probe_from_scratch

from analysis.backend.prompts import build_prompt, chat_messages, GenConfig

from analysis.ingest.pipeline import run
from analysis.backend.tiny import build_model, save_tiny
from analysis.replay.policies import Setting
from analysis.replay.engine import RunTable, full_length, replay
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def tiny():
    return build_model(seed=3, initializer_range=0.3)


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "immediate"])
def test_reused_kv_probe_equals_probe_from_scratch(tiny, defer):
    """Deferred probes (masked to an earlier prefix, rows repeated in one batch, the row's previous answer
    fed as a draft) and immediate ones (the live controller's way) both equal a probe computed from nothing;
    ended answers leave the batch."""
    model, tok = tiny
    cfg = GenConfig(every=5, max_new_tokens=40).resolved("number", "instruct")
    prompts = [build_prompt(tok, q, cfg) for q in ["What is 2+2?", "A longer question about pears and apples?",
                                                   "x", "Wait, what is 12 * 12?"]]
    stats = {}
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [1, tok.convert_tokens_to_ids("!")]   # rows end at different times
    try:
        results = generate_batch(model, tok, prompts, cfg, defer=defer, stats=stats)
        assert stats["compactions"] > 0
        assert (stats["masked"] > 0) == defer      # finals deferred to a later event, masked to their prefix
        if defer:
            assert stats["events"] < sum(len(r.checkpoints) for r in results) / 2
            # the previous answers were fed as drafts: some tokens kept, more rejected (a random model's
            # answers keep changing), and the answers still equal the greedy ones from scratch
            assert 0 < stats["accepted"] < stats["drafted"]
            assert stats["step_drafted"] > 0    # answer steps fed guesses too (see test_answer_step_drafts)
        n = 0
        for prompt, r in zip(prompts, results):
            pids = tok(prompt, add_special_tokens=False)["input_ids"]
            assert r.checkpoints[-1]["kind"] == "final"
            for c in r.checkpoints:
                ref = probe_from_scratch(model, tok, pids + r.token_ids[: c["pos"]], cfg.cue)
                got = c["probe"]
                assert got.tokens == ref.tokens
                assert got.probs == pytest.approx(ref.probs, abs=1e-4)
                assert got.entropy == pytest.approx(ref.entropy, abs=1e-4)
                n += 1
        assert n >= 12
    finally:
        model.generation_config.eos_token_id = eos


def test_answer_step_drafts():
    """What an answer step feeds after the answer's next token: the rest of the previous answer while the
    answer follows it, else what followed the answer's last tokens where they last occur in the trace."""
    from analysis.backend.probe import Prober
    rest = Prober._rest
    assert rest([4, 8, 9], [], [4], 5) == [8, 9]                  # follows the draft
    assert rest([4, 8, 9], [], [4], 1) == [8]                     # as many as fit
    assert rest([4, 8, 9], [7, 5, 4, 3, 1, 4, 6], [5, 4], 2) == [3, 1]   # left the draft: the trace's 2-gram
    assert rest([], [7, 4, 3, 1, 4, 6], [4], 3) == [6]            # the latest occurrence, up to the end
    assert rest([], [7, 4, 3, 1, 4], [4], 3) == [3, 1, 4]         # ...that has something after it
    assert rest([4, 8], [1, 2], [4, 8], 3) == [] and rest([], [1, 2], [9], 3) == []
    assert rest([4, 8, 9], [], [4], 0) == []


def _three_prompts_cached(tiny):
    """Three left-padded prompts through the tiny model: (ids, mask, their cache, width, cue)."""
    import torch
    from transformers import DynamicCache
    model, tok = tiny
    texts = ["What is 2+2? Let me think. 2 and 2 make", "Apples?", "A longer question about pears, then apples"]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              past_key_values=cache, use_cache=True)
    return ids, mask, cache, ids.shape[1], GenConfig().resolved("number", "instruct").cue


def test_batched_probe_with_repeated_rows_and_earlier_prefixes(tiny):
    """One probe batch over a shared cache: a row may appear several times, each entry masked to its own
    prefix length; every entry equals the probe computed from that prefix alone."""
    from analysis.backend.probe import Prober
    model, tok = tiny
    ids, mask, cache, L, cue = _three_prompts_cached(tiny)
    rows, cuts = [0, 0, 1, 2, 2, 2], [L, L - 9, L, L, L - 4, L - 20]
    prober = Prober(model, tok, cue)
    got = prober.run(cache, mask, rows, False, cuts=cuts)
    assert cache.get_seq_length() == L                       # the shared cache is left as it was
    assert prober.stats["repeated"] == 3 and prober.stats["masked"] == 3
    for r, c, g in zip(rows, cuts, got):
        prefix = [t for t, m in zip(ids[r, :c].tolist(), mask[r, :c].tolist()) if m]
        ref = probe_from_scratch(model, tok, prefix, cue)
        assert g.tokens == ref.tokens
        assert g.probs == pytest.approx(ref.probs, abs=1e-4)
        assert g.entropy == pytest.approx(ref.entropy, abs=1e-4)


@pytest.mark.parametrize("guess", ["answer", "answer_then_wrong", "trace", "nothing"])
def test_drafted_answers_equal_the_greedy_ones(tiny, guess):
    """Whatever an entry is fed as a guess (its true answer, one that goes wrong half-way, a trace that holds
    the answer, nothing), the answer and its signals are the greedy probe's from scratch; a right guess
    takes fewer answer steps."""
    from analysis.backend.probe import Prober
    model, tok = tiny
    ids, mask, cache, L, cue = _three_prompts_cached(tiny)
    rows, cuts = [0, 1, 2, 2], [L, L, L, L - 6]
    prefixes = [[t for t, m in zip(ids[r, :c].tolist(), mask[r, :c].tolist()) if m] for r, c in zip(rows, cuts)]
    refs = [probe_from_scratch(model, tok, p, cue) for p in prefixes]
    assert min(len(r.tokens) for r in refs) >= 6          # long enough to need several answer steps
    drafts, contexts = [None] * 4, None
    if guess == "answer":
        drafts = [r.tokens for r in refs]
    elif guess == "answer_then_wrong":
        drafts = [r.tokens[:5] + [(t + 1) % len(tok) for t in r.tokens[5:]] for r in refs]
    elif guess == "trace":           # the trace ends with the answer's start, then holds the rest
        contexts = [p + r.tokens[:1] + [7] + r.tokens for p, r in zip(prefixes, refs)]
    prober = Prober(model, tok, cue)
    got = prober.run(cache, mask, rows, False, cuts=cuts, drafts=drafts, contexts=contexts)
    for g, ref in zip(got, refs):
        assert g.tokens == ref.tokens
        assert g.probs == pytest.approx(ref.probs, abs=1e-4)
        assert g.entropy == pytest.approx(ref.entropy, abs=1e-4)
    st = prober.stats
    steps_plain = max(len(r.tokens) for r in refs) - 1
    if guess == "nothing":
        assert st["steps"] == steps_plain and st["step_drafted"] == 0
    else:
        assert st["step_accepted"] > 0 and st["steps"] < steps_plain
    if guess == "answer_then_wrong":
        assert st["step_accepted"] < st["step_drafted"]


def test_naive_probe_modes_agree_with_reuse(tiny):
    model, tok = tiny
    cfg = GenConfig(every=7, max_new_tokens=21).resolved("number", "instruct")
    prompts = [build_prompt(tok, q, cfg) for q in ["What is 2+2?", "Apples?"]]
    base = generate_batch(model, tok, prompts, cfg, "reuse")
    for mode in ("reencode", "reencode_each", "deepcopy"):
        other = generate_batch(model, tok, prompts, cfg, mode)
        for a, b in zip(base, other):
            assert [c["probe"].tokens for c in a.checkpoints] == [c["probe"].tokens for c in b.checkpoints]


@pytest.mark.parametrize("how", ["deferred", "immediate", "sampled", "controller"])
def test_finished_rows_leave_the_batch_without_changing_anything(tiny, how):
    """Dropping finished rows from the generation batch changes the time only: the same traces, checkpoints,
    trial answers and signals as keeping them (greedy and sampled, deferred and immediate probes, rows
    stopped by a controller)."""
    model, tok = tiny
    temp = 0.9 if how == "sampled" else 0.0
    cfg = GenConfig(every=4, max_new_tokens=36, temperature=temp, seed=11).resolved("number", "instruct")
    prompts = [build_prompt(tok, q, cfg) for q in ["What is 2+2?", "A longer question about pears and apples?",
                                                   "x", "Wait, what is 12 * 12?", "Pears?", "7 - 5 = ?"]]
    stop_at = {1: 8, 4: 12}                    # the controller stops these rows at their first checkpoint past

    def hook(rows, results):
        return [r for r in rows if r in stop_at and results[r].checkpoints[-1]["pos"] >= stop_at[r]]
    kw = {"defer": how != "immediate", "on_checkpoint": hook if how == "controller" else None}
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [1, tok.convert_tokens_to_ids("!")]   # rows end at different times
    try:
        stats = {}
        got = generate_batch(model, tok, prompts, cfg, compact=True, stats=stats, **kw)
        ref = generate_batch(model, tok, prompts, cfg, compact=False, **kw)
    finally:
        model.generation_config.eos_token_id = eos
    assert stats["rows_dropped"] >= 1
    lengths = {len(r.token_ids) for r in ref}
    assert len(lengths) >= 3, lengths           # rows did end at different times
    if how == "controller":
        assert {r.finish_reason for r in ref} >= {"stopped"}
    for a, b in zip(got, ref):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert [(c["pos"], c["kind"]) for c in a.checkpoints] == [(c["pos"], c["kind"]) for c in b.checkpoints]
        for ca, cb in zip(a.checkpoints, b.checkpoints):
            assert ca["probe"].tokens == cb["probe"].tokens
            assert ca["probe"].probs == pytest.approx(cb["probe"].probs, abs=1e-5)
            assert ca["probe"].entropy == pytest.approx(cb["probe"].entropy, abs=1e-5)


def test_fast_decode_attention_equals_sdpa_on_a_grouped_query_model():
    """``use_fast_decode`` switches a CPU grouped-query model to ``stopline_sdpa``, which computes the same
    attention as sdpa (fp32, within rounding) for unpadded and padded decode steps and for several tokens at
    once (a probe's cue, a prefill under a padding mask). (Bit-exactness across
    batches is checked on SmolLM2 in bf16, in the integration tests.)"""
    import copy

    import torch
    from transformers import DynamicCache

    from analysis.backend.attention import NAME, use_fast_decode
    ref, tok = build_model(seed=4, heads=4, kv_heads=2, initializer_range=0.3)
    fast = copy.deepcopy(ref)
    assert use_fast_decode(fast) and fast.config._attn_implementation == NAME
    assert ref.config._attn_implementation == "sdpa"
    for batch in (["Apples and pears, and then more apples?"], ["What is 2+2?", "Apples and pears, and more?"]):
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        outs = []
        for model in (ref, fast):
            ids, mask = enc["input_ids"], enc["attention_mask"]
            cache, lg = DynamicCache(), []
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      past_key_values=cache, use_cache=True)
                for s in range(5):
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                    lg.append(model(input_ids=ids[:, s:s + 1], attention_mask=mask, past_key_values=cache,
                                    position_ids=mask.sum(-1, keepdim=True) - 1, use_cache=True).logits[:, -1])
                # several tokens at once under a mask (a probe's cue): the query heads stacked per key/value head
                m = torch.cat([mask, torch.ones_like(mask[:, :4])], 1)
                lg += list(model(input_ids=ids[:, :4], attention_mask=m, past_key_values=cache, use_cache=True,
                                 position_ids=mask.sum(-1, keepdim=True) + torch.arange(4)[None]).logits.transpose(0, 1))
            outs.append(torch.stack(lg))
        assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_end_to_end_run_into_store_and_replay(tiny, store):
    cfg = GenConfig(every=8, max_new_tokens=24)
    res = run(store, "tiny-random", "rg:basic_arithmetic", limit=6, cfg=cfg, batch_size=4, loaded=(*tiny, {
        "kind": "instruct", "dtype": "float32"}), show_progress=False)
    assert res["n_questions"] == 6 and res["n_checkpoints"] >= 6 * 3
    t = RunTable.from_store(store, res["run_id"])
    assert t.has_signal("p_mean") and t.has_signal("entropy")
    assert (t.lengths >= 3).all()
    for fam in ("budget", "consistency", "confidence", "entropy", "hybrid"):
        replay(t, Setting.make(fam)).summary()
    assert full_length(t).summary()["em"] == res["em_full"]
    # each checkpoint knows where it cuts the trace's text: the decoded prefix of its tokens; the end, all of it
    tok = tiny[1]
    for qid in t.question_ids[:3]:
        tr = store.trace(res["run_id"], qid)
        ck = store.checkpoints(res["run_id"]).to_pandas().query("question_id == @qid").sort_values("ck_idx")
        assert tr["char_pos"] == ck["char_pos"].tolist() and None not in tr["char_pos"]
        assert tr["char_pos"][-1] == len(tr["text"]) and tr["char_pos"] == sorted(tr["char_pos"])
    # and they are the decoded prefixes of the generated tokens (the records of one batch, ids in hand)
    from analysis.backend.records import to_tables
    from analysis.ingest.datasets import load_dataset
    qs = load_dataset("rg:basic_arithmetic", 3, seed=42).questions
    rc = cfg.resolved("number", "instruct")
    results = generate_batch(tiny[0], tok, [build_prompt(tok, q.text, rc) for q in qs], rc)
    _, cks = to_tables("r", qs, results, tok, "number")
    cuts = iter(cks.column("char_pos").to_pylist())
    for r in results:
        text = tok.decode(r.token_ids, skip_special_tokens=True)
        for c in r.checkpoints:
            assert text[:next(cuts)] == tok.decode(r.token_ids[:c["pos"]], skip_special_tokens=True)
    # asking again finds the finished run and generates nothing
    again = run(store, "tiny-random", "rg:basic_arithmetic", limit=6, cfg=cfg, loaded=(*tiny, {
        "kind": "instruct", "dtype": "float32"}), show_progress=False)
    assert again["run_id"] == res["run_id"] and again["generated_now"] == 0


def test_sigkill_mid_run_then_resume_finds_every_question_once(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny", seed=5)
    db = tmp_path / "kill.duckdb"
    args = [sys.executable, "-m", "analysis", "run", "--model", str(model_dir), "--dataset", "rg:basic_arithmetic",
            "--limit", "24", "--batch-size", "2", "--every", "8", "--max-new-tokens", "48", "--device", "cpu",
            "--db", str(db), "--json"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # wait until some batches are committed, then kill without warning
    from analysis.core.store import Store
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                runs = Store(db, read_only=True, lock_timeout=5).runs()
                done = runs[0]["n_questions"] if runs else 0
            except Exception:
                continue
            if done >= 4:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 4 <= done < 24, f"expected a partial run, saw {done}"
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = Store(db, read_only=True)
    (run_row,) = s.runs()
    assert run_row["n_questions"] == 24 and run_row["status"] == "complete"
    with s.connect() as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT question_id) FROM traces").fetchone() == (24, 24)
        dup = con.execute("SELECT COUNT(*) FROM (SELECT question_id, ck_idx FROM checkpoints "
                          "GROUP BY 1, 2 HAVING COUNT(*) > 1)").fetchone()[0]
        assert dup == 0
        orphans = con.execute("SELECT COUNT(*) FROM checkpoints c ANTI JOIN traces t USING (run_id, question_id)"
                              ).fetchone()[0]
        assert orphans == 0


def test_bad_model_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("run", "--model", str(tmp_path / "no-such-model"), "--dataset", "rg:basic_arithmetic",
                       "--limit", "1", "--db", tmp_path / "x.duckdb")
    assert code == 2 and "no such file or folder" in err and "Traceback" not in err


@pytest.mark.parametrize("model,dataset,match", [
    ("smollm2-135m-instruct", "rg:no_such_task", "unknown reasoning-gym task"),
    ("{tmp}/no-such-model", "rg:basic_arithmetic", "no such file or folder"),
    ("{tmp}/empty", "rg:basic_arithmetic", "this model folder has no config.json"),
    ("nosuch-model", "rg:basic_arithmetic", "'nosuch-model' is not a packaged model, a local file or folder"),
], ids=["bad-dataset", "missing-model", "empty-folder", "not-a-name"])
def test_a_run_that_fails_before_it_starts_makes_no_store(cli, tmp_path, monkeypatch, model, dataset, match):
    """A bad dataset or model left a new, empty store (and its folder) behind, and read commands then stopped
    falling back to the demo store."""
    (tmp_path / "empty").mkdir()
    model = model.format(tmp=tmp_path)
    monkeypatch.setenv("STOPLINE_DB", str(tmp_path / "new" / "def.duckdb"))
    code, _, err = cli("run", "--model", model, "--dataset", dataset, "--limit", "1", "--device", "cpu")
    assert code == 2 and match in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()
    code, out, err = cli("runs")
    assert code == 0 and "reading the demo store" in err
    code, _, err = cli("run", "--model", model, "--dataset", dataset, "--limit", "1", "--device", "cpu",
                       "--db", tmp_path / "named" / "s.duckdb")
    assert code == 2 and match in err and not (tmp_path / "named").exists()


def test_an_openai_run_with_no_server_makes_no_store(cli, tmp_path):
    import socket
    with socket.socket() as sock:          # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tok_dir = save_tiny(tmp_path / "tiny", seed=1)
    code, _, err = cli("run", "--engine", "openai", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "served",
                       "--tokenizer", tok_dir, "--dataset", "rg:basic_arithmetic", "--limit", "1",
                       "--db", tmp_path / "new" / "s.duckdb")
    assert code == 2 and "no server answered" in err and not (tmp_path / "new").exists()


def test_a_store_that_cannot_be_written_is_said_before_the_dataset_and_model_load(cli, tmp_path):
    code, _, err = cli("run", "--model", "smollm2-135m-instruct", "--dataset", "rg:no_such_task", "--db", tmp_path)
    assert code == 2 and "is a directory, not a store file" in err


def test_a_run_on_a_table_takes_a_field_mapping_and_keeps_it(cli, tmp_path):
    """run had no --question-field / --gold-field / --id-field / --answer-type: a JSONL with other field names
    could not be run. The mapping is part of the dataset's id, hence of the run's identity, and the questions of
    two mappings are stored apart (each with its own gold)."""
    from analysis.core.store import Store
    model_dir = save_tiny(tmp_path / "tiny", seed=2)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"item": {"prompt": f"What is {i} + {i}?"}, "sol": str(2 * i),
                                           "words": f"{i} twice", "key": f"k{i}"}) for i in range(3)))
    db = tmp_path / "s.duckdb"
    common = ["--model", model_dir, "--limit", 2, "--every", 4, "--max-new-tokens", 8, "--device", "cpu", "--db", db,
              "--json"]
    code, _, err = cli("run", "--dataset", f"jsonl:{data}", *common)           # the default fields are not there
    assert code == 2 and "line 1, field 'question': missing field" in err and not db.exists()
    code, out, err = cli("run", "--dataset", f"jsonl:{data}", "--question-field", "item.prompt", "--gold-field", "sol",
                         "--id-field", "key", *common)
    assert code == 0, err
    num = json.loads(out.strip().splitlines()[-1])
    code, out, err = cli("run", "--dataset", f"jsonl:{data}", "--question-field", "item.prompt", "--gold-field",
                         "words", "--id-field", "key", "--answer-type", "text", *common)
    assert code == 0, err
    text = json.loads(out.strip().splitlines()[-1])
    assert text["run_id"] != num["run_id"]
    s = Store(db, read_only=True)
    runs = {r["id"]: r for r in s.runs()}
    mapped = f"jsonl:{data}?question_field=item.prompt&gold_field=sol&id_field=key"
    assert runs[num["run_id"]]["dataset"] == mapped and runs[num["run_id"]]["answer_type"] == "number"
    assert runs[text["run_id"]]["dataset"] == f"jsonl:{data}?question_field=item.prompt&gold_field=words&id_field=key" \
        "&answer_type=text" and runs[text["run_id"]]["answer_type"] == "text"
    assert runs[num["run_id"]]["config"]["dataset"]["id"] == mapped
    assert s.questions(mapped).to_pydict()["gold"] == ['["0"]', '["2"]']
    assert s.questions(runs[text["run_id"]]["dataset"]).to_pydict()["gold"] == ['["0 twice"]', '["1 twice"]']
    assert s.trace(num["run_id"], "k1")["question"] == "What is 1 + 1?"
    code, out, err = cli("run", "--dataset", mapped, *common)          # the id alone asks for the same run
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["run_id"] == num["run_id"]
    code, _, err = cli("run", "--dataset", "rg:basic_arithmetic", "--gold-field", "x", *common)
    assert code == 2 and "a field mapping is for jsonl:, csv:, parquet:, hf: datasets, not rg:" in err


def test_a_path_or_name_that_holds_no_model_is_said_at_once(tmp_path):
    """An empty folder said "Couldn't instantiate the backend tokenizer from one of: " (cut off); a name that is
    nothing spent a minute on the hub's retries. Now each says what it lacks, before transformers is asked."""
    from analysis.backend.models import check_model, load_tokenizer
    from analysis.core.errors import StoplineError
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoplineError, match=r"this model folder has no config.json, no tokenizer \(none of "
                                            r"tokenizer.json.*\), no weights \(no \*.safetensors") as e:
        check_model(str(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(e.value)
    with pytest.raises(StoplineError, match="this tokenizer folder has no tokenizer"):
        load_tokenizer(str(tmp_path / "empty"))        # the openai engine's --tokenizer needs only a tokenizer
    model_dir = save_tiny(tmp_path / "tiny", seed=1)
    assert check_model(str(model_dir)) == "folder"
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(StoplineError, match=r"has no weights") as e:
        check_model(str(model_dir))
    assert "config.json" not in e.value.message and check_model(str(model_dir), tokenizer_only=True) == "folder"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StoplineError, match="is a file but not a .gguf model"):
        check_model(str(tmp_path / "notes.txt"))
    for name in (str(tmp_path / "missing"), "./missing", "~/missing-model", "a/b/c", "missing.gguf"):
        with pytest.raises(StoplineError, match="no such file or folder"):
            check_model(name)
    with pytest.raises(StoplineError, match="did you mean smollm2-135m-instruct"):
        check_model("smolm2-135m-instruct")
    assert check_model("smollm2-135m-instruct") == "packaged"
    assert check_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"


def test_a_hub_id_is_not_retried_for_a_minute_when_the_hub_cannot_be_reached(tmp_path):
    """Offline, a hub id not in the cache spent ~58 s on the hub client's retries before its error; now one try
    decides, and a model in the cache still loads (with the hub unreachable, or HF_HUB_OFFLINE set)."""
    import socket
    with socket.socket() as sock:          # a port nothing listens on: the hub's connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hub = tmp_path / "hub"
    for repo in ("someone--tiny", "legacytiny"):      # the hub cache's layout: models--OWNER--NAME/snapshots/REV
        save_tiny(hub / f"models--{repo}" / "snapshots" / ("a" * 40), seed=1)
        (hub / f"models--{repo}" / "refs").mkdir()
        (hub / f"models--{repo}" / "refs" / "main").write_text("a" * 40)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=str(hub))

    def run_(model, **extra):
        return subprocess.run([sys.executable, "-m", "analysis", "run", "--model", model, "--dataset",
                               "rg:basic_arithmetic", "--limit", "1", "--max-new-tokens", "8", "--device", "cpu",
                               "--db", str(tmp_path / "s.duckdb"), "--json"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**env, **extra})
    r = run_("nosuch/model")
    assert r.returncode == 2 and "cannot fetch 'nosuch/model' from the Hugging Face hub" in r.stderr
    assert "not in the local cache" in r.stderr and "Retrying" not in r.stderr
    assert not (tmp_path / "s.duckdb").exists()
    r = run_("someone/tiny")
    assert r.returncode == 0, r.stderr
    r = run_("legacytiny", HF_HUB_OFFLINE="1")      # a hub id without an owner: taken when the cache has it
    assert r.returncode == 0, r.stderr


def test_reprobe_an_imported_run_adds_signals(tiny, store):
    from analysis.ingest.reprobe import reprobe
    from analysis.ingest.importer import ImportSpec, import_generations
    from tests.helpers import FIXTURES
    imp = import_generations(store, ImportSpec(path=str(FIXTURES / "solutions.jsonl"), model="hand",
                                               dataset="hand-gsm", response_field="outputs.solution"),
                             show_progress=False)
    res = reprobe(store, imp["run_id"], "tiny-random", every=8, loaded=(*tiny, {"kind": "instruct",
                                                                                  "dtype": "float32"}),
                  show_progress=False)
    assert res["n_questions"] == 32 and res["em_full"] == imp["em_full"]   # the final answers are the trace's own
    t = RunTable.from_store(store, res["run_id"])
    assert t.has_signal("p_mean") and t.has_signal("entropy")
    replay(t, Setting.make("confidence", tau=0.5)).summary()
    # listed as the imported model's traces, probed by the probing model
    runs = {r["id"]: r for r in store.runs()}
    assert runs[res["run_id"]]["traces_model"] == "hand" and runs[imp["run_id"]]["traces_model"] is None
    from views.data import run_label
    assert run_label(runs[res["run_id"]]).startswith("hand probed by tiny-random · ")
    # the probe at a checkpoint equals a from-scratch probe of the same prefix
    model, tok = tiny
    tr = store.trace(res["run_id"], t.question_ids[0])
    ck = store.checkpoints(res["run_id"]).to_pylist()
    first = [c for c in ck if c["question_id"] == t.question_ids[0]][0]
    from analysis.backend.prompts import GenConfig
    cfg = GenConfig(every=8).resolved("number", "instruct")
    p_ids = tok(build_prompt(tok, tr["question"], cfg), add_special_tokens=False)["input_ids"]
    t_ids = tok(tr["text"], add_special_tokens=False)["input_ids"]
    ref = probe_from_scratch(model, tok, p_ids + t_ids[: first["pos"]], cfg.cue)
    assert first["p_mean"] == pytest.approx(float(np.mean(ref.probs)) if ref.probs else None, abs=1e-4)


def test_char_positions_are_exact_where_a_token_ends_inside_a_character():
    """A byte-level BPE (the packaged SmolLM2's) splits a rare character over several tokens: a cut between
    them leaves the character after the cut; every cut is where the decoded prefix stops agreeing with the
    text, and the prefix up to it is the text's."""
    from transformers import AutoTokenizer

    from analysis.backend.models import CACHE
    from analysis.backend.records import char_positions
    path = CACHE / "smollm2-135m-instruct" / "bf16"
    if not (path / "tokenizer.json").exists():
        pytest.skip("the packaged SmolLM2 is not converted here (python -m analysis models fetch)")
    tok = AutoTokenizer.from_pretrained(str(path))
    text = "Let's see: 12 × 7 = 84 🙂 then\n\nWait, 84 + 3 = 87 ✓ so the answer is \\boxed{87}."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    cuts = char_positions(tok, ids, list(range(len(ids) + 1)), text)
    assert cuts[0] == 0 and cuts[-1] == len(text) and cuts == sorted(cuts)
    split = 0
    for p, c in zip(range(len(ids) + 1), cuts):
        prefix = tok.decode(ids[:p])
        assert prefix.startswith(text[:c])
        assert c == len(text) or not prefix.startswith(text[:c + 1])
        split += prefix != text[:c]             # a character cut in two: decoded as a replacement character
    assert split > 0


def test_the_prompt_is_the_chat_every_engine_sends():
    """build_prompt (the transformers engine) and the gateway's verification send the same chat: the system
    message first when a run has one, the question in the template; a tokenizer without a chat template gets
    the question's text and a newline."""
    cfg = GenConfig(system="Be brief.", prompt_template="Q: {question}")
    assert chat_messages("1 + 1?", cfg) == [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Q: 1 + 1?"}]
    assert chat_messages("1 + 1?", GenConfig(prompt_template="Q: {question}")) == [
        {"role": "user", "content": "Q: 1 + 1?"}]

    class Plain:                          # a tokenizer with no chat template (a base model's)
        chat_template = None
    assert build_prompt(Plain(), "1 + 1?", cfg) == "Q: 1 + 1?\n"


def test_a_resumed_runs_execution_figures_add_up_its_sessions():
    from analysis.ingest.pipeline import summed_execution
    one = summed_execution({"engine": "openai"}, {
        "gen_tokens": 300, "probes": 10, "probe_prompt_tokens": 1000, "probe_cached_tokens": 600,
        "cacheable_tokens": 800, "seconds": 30.0, "retries": 1, "replica_failures": {"http://a/v1": 1},
        "errors": ["e1", "e2", "e3"], "token_ids": "server"})             # an interrupted session: no server figures
    assert one["sessions"] == 1 and one["gen_tok_s"] == 10.0 and one["probe_cache_hit_rate"] == 0.6
    assert one["server_prefix_cache_hit_rate"] is None and one["cacheable_share"] == 0.8
    two = summed_execution(one, {
        "gen_tokens": 100, "probes": 5, "probe_prompt_tokens": 1000, "probe_cached_tokens": 800,
        "cacheable_tokens": 900, "seconds": 10.0, "retries": 0, "replica_failures": {"http://a/v1": 2,
                                                                                     "http://b/v1": 1},
        "errors": ["e4", "e5", "e6"], "server_prefix_cache_queries": 50, "server_prefix_cache_hits": 40})
    assert two["sessions"] == 2 and two["gen_tokens"] == 400 and two["probes"] == 15 and two["seconds"] == 40.0
    assert two["gen_tok_s"] == 10.0 and two["probe_cache_hit_rate"] == 0.7 and two["cacheable_share"] == 0.85
    assert two["server_prefix_cache_hit_rate"] == 0.8                   # the session that had them
    assert two["replica_failures"] == {"http://a/v1": 3, "http://b/v1": 1} and two["errors"] == [
        "e2", "e3", "e4", "e5", "e6"]
    legacy = summed_execution({"gen_tokens": 50, "probe_prompt_tokens": 100, "probes": 2}, {
        "gen_tokens": 10, "probe_prompt_tokens": 100, "cacheable_tokens": 90, "probes": 1})
    assert legacy["sessions"] == 2 and legacy["gen_tokens"] == 60 and legacy["cacheable_share"] is None
    mixed = summed_execution(two, {"gen_tokens": 10, "probe_prompt_tokens": 100, "probe_cached_tokens": None,
                                   "cacheable_tokens": 50})
    assert mixed["probe_cache_hit_rate"] is None and mixed["cacheable_share"] == (1700 + 50) / 2100   # not understated
