"""A run: dataset x model x generation config, generated and probed batch by batch into the store (each
batch of finished questions in one transaction, so an interrupted run resumes where it stopped), and the
run's default sweep kept when it completes."""
from __future__ import annotations

import time
from dataclasses import asdict

from analysis.core.aio import run_sync
from analysis.backend.decode import generate_batch
from analysis.backend.models import check_model, load
from analysis.backend.prompts import build_prompt, GenConfig
from analysis.backend.records import to_tables
from analysis.core.errors import GoldConflict, StoplineError
from analysis.core.store import check_target, writing_to
from analysis.core.progress import progress
from analysis.evaluate.frontier import materialise
from analysis.ingest.datasets import load_dataset


# --- a run: dataset x model x config, into the store ------------------------------------------------------
def run_config(model_name: str, info: dict, dataset_id: str, seed: int, cfg: GenConfig) -> dict:
    """What identifies a run (its hash is the cache key). Batch size and device are left out."""
    return {"source": "generate", "model": {"name": model_name, "sha256": info.get("sha256"), "kind": info["kind"],
                                            "dtype": info["dtype"]},
            "dataset": {"id": dataset_id, "seed": seed}, "gen": asdict(cfg), "stopline_runner": 1}



def run(store, model_name: str, dataset_id: str, *, limit: int | None = None, seed: int = 42,
        cfg: GenConfig | None = None, batch_size: int = 8, device: str = "auto", loaded=None,
        show_progress: bool = True, dataset_options: dict | None = None, probes: str = "batched") -> dict:
    """Generate and probe a dataset with a model into the store; resumes an interrupted run.

    ``store``: a ``Store``, or its path (None: the default store), then opened, and made when new, only once
    the dataset and the model have loaded: a bad dataset or model makes no store (core/store.py ``writing_to``).

    ``probes``: 'batched' (default) defers the probes that fire for a few rows at a time to the next interval
    checkpoint and runs them in one batch; 'immediate' probes each checkpoint when it comes, exactly as the
    live controller does, so that ``verify-controller`` can expect bit-for-bit the same probe outputs (with
    bf16 weights, batching changes rounding: a trial answer differs at a few percent of checkpoints).
    Recorded in the run's config under ``execution`` with the batch size and device (how the run was
    computed, not part of its identity: verify-controller re-runs it with the same batch size)."""
    cfg = cfg or GenConfig()
    if probes not in ("batched", "immediate"):
        raise StoplineError(f"probes must be 'batched' or 'immediate', not {probes!r}")
    check_target(store)
    if loaded is None:
        check_model(model_name)          # a name or folder that is no model: said before the dataset is read
    ds = _dataset(dataset_id, limit, seed, dataset_options)
    model, tok, info = loaded or load(model_name, device)
    cfg = cfg.resolved(ds.answer_type, info["kind"])
    config = {**run_config(model_name, info, ds.id, seed, cfg),
              "execution": {"probes": probes, "batch_size": batch_size, "device": info.get("device")}}
    with writing_to(store) as store:
        run_id, created = _open_run(store, model_name, ds, config)
        finished = store.finished_questions(run_id)
        todo = [q for q in ds.questions if q.id not in finished]
        prompts = {q.id: build_prompt(tok, q.text, cfg) for q in todo}
        todo.sort(key=lambda q: len(prompts[q.id]))       # similar lengths together: less padding
        bar = progress(total=len(ds), desc=f"{model_name} on {ds.id}", unit="q", disable=not show_progress,
                       initial=len(ds) - len(todo))
        t_start, n_tok = time.perf_counter(), 0
        try:
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                try:
                    results = generate_batch(model, tok, [prompts[q.id] for q in batch], cfg,
                                             defer=probes == "batched")
                except RuntimeError as e:
                    if "out of memory" in str(e).lower():
                        raise StoplineError(f"out of memory at batch size {len(batch)}; {i} questions of this "
                                            "session are saved", hint="resume with a smaller --batch-size") from None
                    raise
                traces, cks = to_tables(run_id, batch, results, tok, ds.answer_type)
                store.put_results(traces, cks)
                n_tok += sum(len(r.token_ids) for r in results)
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{n_tok / (time.perf_counter() - t_start):.0f}")
        except BaseException:
            _interrupted(store, run_id)
            raise
        finally:
            bar.close()
        return _complete(store, run_id, created, len(todo), t_start, n_tok)


def _dataset(dataset_id: str, limit: int | None, seed: int, options: dict | None):
    """The run's dataset: a reasoning-gym task is generated with the run's seed unless the options name one."""
    opts = dict(options or {})
    if dataset_id.startswith("rg:"):
        opts.setdefault("seed", seed)
    return load_dataset(dataset_id, limit, **opts)


def _open_run(store, model_name: str, ds, config: dict) -> tuple[str, bool]:
    """The run's row (found again when resumed), its questions and attribution, in one transaction."""
    with store.transaction() as con:
        run_id, created = store.get_or_create_run(model=model_name, dataset=ds.id, answer_type=ds.answer_type,
                                                  source="generated", config=config, n_planned=len(ds), con=con)
        try:
            store.put_questions(ds.id, ds.questions, con=con)
        except GoldConflict as e:       # the dataset's source changed since its questions were stored
            raise StoplineError(e.message, field="dataset", hint="the dataset's file (or generator) gives another "
                                "gold than when a run first stored it: restore it, or save the changed one under "
                                "another name (its id names it)") from None
        if ds.attribution:
            store.set_attribution(ds.id, ds.attribution, con=con)
        con.execute("UPDATE runs SET n_planned = GREATEST(COALESCE(n_planned, 0), ?), status = 'running' "
                    "WHERE run_id = ?", [len(ds), run_id])
    return run_id, created


def _interrupted(store, run_id: str) -> None:
    """A session that ended before its questions did (Ctrl-C, an error): the run says so until it is resumed
    (the same command resumes it), rather than 'running'."""
    try:
        store.set_run_status(run_id, "interrupted")
    except Exception:           # noqa: BLE001 - the session's own error is the one to report
        pass


def _complete(store, run_id: str, created: bool, n_now: int, t_start: float, n_tok: int) -> dict:
    store.set_run_status(run_id, "complete")
    materialise(store, run_id)          # the sweep the dashboard draws first
    r = store.run(run_id)
    return {"run_id": run_id, "created": created, "n_questions": r["n_questions"], "n_checkpoints": r["n_checkpoints"],
            "em_full": r["em_full"], "mean_tokens": r["mean_tokens"], "generated_now": n_now,
            "seconds": round(time.perf_counter() - t_start, 2), "tokens": n_tok}


# --- a run through OpenAI-compatible servers -----------------------------------------------------------------
SUMMED = ("gen_tokens", "probes", "probe_prompt_tokens", "probe_cached_tokens", "cacheable_tokens", "answer_tokens",
          "probes_past_context", "retries", "seconds", "server_prefix_cache_queries", "server_prefix_cache_hits")


def summed_execution(prev: dict, now: dict) -> dict:
    """A run's execution figures after one more session (``now``) on top of the earlier ones (``prev``, the
    run's recorded execution info; an interrupted session's are recorded too): counts added (a count a
    session did not have, None, is left out of the sum), failures per replica added, the last five errors, and
    the rates computed again from the sums."""
    out = {"sessions": int(prev.get("sessions") or (1 if "gen_tokens" in prev else 0)) + 1,
           "token_ids": now.get("token_ids", prev.get("token_ids"))}
    legacy = "gen_tokens" in prev and "sessions" not in prev      # recorded before sessions were summed
    had = "gen_tokens" in prev                                      # an earlier session's figures are there

    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    for k in SUMMED:
        have = [v for v in (prev.get(k), now.get(k)) if num(v)]
        out[k] = (round(sum(have), 2) if k == "seconds" else sum(have)) if have else None
    # a count one session had and another did not (a server that stopped reporting cached tokens, an earlier
    # session recorded before the count existed) sums nothing that a rate could be made of
    for k in ("probe_cached_tokens", "cacheable_tokens"):
        if had and num(prev.get(k)) != num(now.get(k)):
            out[k] = None
    if legacy:                                  # the server's counters were not recorded: only its rate
        out["server_prefix_cache_queries"] = out["server_prefix_cache_hits"] = None
    fails = dict(prev.get("replica_failures") or {})
    for url, n in (now.get("replica_failures") or {}).items():
        fails[url] = fails.get(url, 0) + n
    out["replica_failures"] = fails
    out["errors"] = (list(prev.get("errors") or []) + list(now.get("errors") or []))[-5:]

    def ratio(a, b, nd=None):
        x, y = out.get(a), out.get(b)
        return None if x is None or not y else (round(x / y, nd) if nd is not None else x / y)
    out["probe_cache_hit_rate"] = ratio("probe_cached_tokens", "probe_prompt_tokens")
    out["cacheable_share"] = ratio("cacheable_tokens", "probe_prompt_tokens")
    out["server_prefix_cache_hit_rate"] = ratio("server_prefix_cache_hits", "server_prefix_cache_queries")
    out["gen_tok_s"] = ratio("gen_tokens", "seconds", 1)
    return out


def run_openai(store, base_urls: list[str], model: str, tokenizer: str, dataset_id: str, *, limit: int | None = None,
               seed: int = 42, cfg: GenConfig | None = None, concurrency: int = 8, api_key: str | None = None,
               show_progress: bool = True, dataset_options: dict | None = None, max_retries: int = 4,
               flush_every: int = 8, retry_base_s: float = 0.5, top_k: int = 20) -> dict:
    """Generate and probe a dataset through one or more OpenAI-compatible servers (``--engine openai``) into the
    store: the same run format, checkpoints and signals as the in-process engine, resumed the same way.

    The run's identity holds the engine, the served model's name, the server and its version and the
    tokenizer; the URLs are not part of it (the same run may be resumed on other replicas). Finished
    questions are committed ``flush_every`` at a time (and at least every two seconds): an interrupted run
    loses only those in flight."""
    import asyncio

    from analysis.backend.engine_openai import OpenAIEngine, question_seed
    from analysis.backend.models import load_tokenizer
    cfg = cfg or GenConfig()
    check_target(store)
    check_model(tokenizer, tokenizer_only=True)
    ds = _dataset(dataset_id, limit, seed, dataset_options)
    tok, kind, eos = load_tokenizer(tokenizer)
    cfg = cfg.resolved(ds.answer_type, kind)

    async def go():
        async with OpenAIEngine(base_urls, model, tok, eos=eos, api_key=api_key, concurrency=concurrency,
                                max_retries=max_retries, retry_base_s=retry_base_s, top_k=top_k) as eng:
            info = await eng.check()          # before anything is written
            config = {"source": "generate",
                      "engine": {"name": "openai", "server_model": model, "server": info["server"],
                                 "server_version": info["server_version"], "top_logprobs": top_k},
                      "model": {"name": model, "tokenizer": tokenizer, "kind": kind},
                      "dataset": {"id": ds.id, "seed": seed}, "gen": asdict(cfg), "stopline_runner": 1,
                      "execution": {"engine": "openai", "concurrency": concurrency, **info}}
            with writing_to(store) as target:     # made only now: the dataset, tokenizer and server are fine
                run_id, created = _open_run(target, model, ds, config)
                prev = {} if created else (target.run(run_id)["config"].get("execution") or {})
                finished = target.finished_questions(run_id)
                todo = [q for q in ds.questions if q.id not in finished]
                bar = progress(total=len(ds), desc=f"{model} on {ds.id} (openai)", unit="q",
                               disable=not show_progress, initial=len(ds) - len(todo))
                t_start, m0 = time.perf_counter(), await eng.metrics()
                buf: list = []
                last_flush = [time.monotonic()]

                def flush():
                    if buf:
                        traces, cks = to_tables(run_id, [q for q, _ in buf], [r for _, r in buf], tok,
                                                ds.answer_type)
                        target.put_results(traces, cks)
                        bar.update(len(buf))
                        buf.clear()
                    last_flush[0] = time.monotonic()

                async def one(q):
                    p_ids = tok(build_prompt(tok, q.text, cfg), add_special_tokens=False)["input_ids"]
                    res = await eng.question(p_ids, cfg, question_seed(seed, q.id), label=q.id)
                    buf.append((q, res))
                    if len(buf) >= flush_every or time.monotonic() - last_flush[0] > 2:
                        flush()

                tasks = [asyncio.ensure_future(one(q)) for q in todo]
                ended = False
                try:
                    await asyncio.gather(*tasks)
                    ended = True
                except BaseException:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    _interrupted(target, run_id)
                    raise
                finally:
                    flush()                       # what finished is kept, whatever happened to the rest
                    bar.close()
                    # this session's figures added to the earlier ones' (an interrupted session's too: a resumed
                    # run's execution info counts all it computed); the server's counters only when it ended
                    m1 = await eng.metrics() if ended else {}
                    st = eng.stats.as_dict()
                    now_ = {**{k: st[k] for k in SUMMED if k in st}, "replica_failures": st["replica_failures"],
                            "errors": st["errors"], "token_ids": st["ids_from"],
                            "seconds": round(time.perf_counter() - t_start, 2)}
                    if m1:
                        now_["server_prefix_cache_queries"] = (m1.get("prefix_cache_queries_total", 0)
                                                               - m0.get("prefix_cache_queries_total", 0))
                        now_["server_prefix_cache_hits"] = (m1.get("prefix_cache_hits_total", 0)
                                                            - m0.get("prefix_cache_hits_total", 0))
                    execution = summed_execution(prev, now_)
                    target.set_execution(run_id, execution)
                out = _complete(target, run_id, created, len(todo), t_start, st["gen_tokens"])
                return {**out, "execution": execution}

    return run_sync(go())
