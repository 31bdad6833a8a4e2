"""Runs: what the store holds; start a new run as a background job; import a file of generations."""
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from analysis.production import jobs
from analysis.core.errors import StoplineError
from views import data

MY_DB = data.my_db()

st.header("Runs")
runs = data.picked_runs()
if not runs:
    st.info("This store has no runs yet: start one or import a file below.")
else:
    def tokens(r):          # imports count word pieces unless given the model's tokenizer
        t = (r["config"].get("checkpoints") or {}).get("tokens", "")
        return "approximate (word pieces)" if t == "word-pieces" else "tokenizer" if t.startswith("tokenizer:") \
            else "the model's"
    label = data.run_labeller(runs)
    # what people compare first, then where a run comes from
    df = pd.DataFrame([{"run": label(r["id"]), "em_full": r["em_full"], "mean_tokens": r["mean_tokens"],
                        "n_questions": r["n_questions"], "n_checkpoints": r["n_checkpoints"], "status": r["status"],
                        "tokens": tokens(r), "source": r["source"], "id": r["id"], "model": r["model"],
                        "dataset": r["dataset"]} for r in runs])
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "run": st.column_config.TextColumn("run", width="medium"),
        "em_full": st.column_config.NumberColumn("EM (full length)", format="%.3f"),
        "mean_tokens": st.column_config.NumberColumn("mean tokens", format="%.0f"),
        "n_questions": st.column_config.NumberColumn("questions"),
        "n_checkpoints": st.column_config.NumberColumn("checkpoints")})
    served = [r for r in runs if (r["config"].get("engine") or {}).get("name") == "openai"]
    if served:
        with st.expander(f"Computed through a server: {len(served)} run(s)", expanded=True):
            st.dataframe(pd.DataFrame([data.engine_figures(r) for r in served]), hide_index=True, width="stretch")
            st.caption("Probe prefix-cache hits: the probes' prompt tokens the server served from its cache; "
                       "the cacheable share is what its KV blocks allow (docs/engines.md).")
    for ds, text in data.attributions().items():
        if any(r["dataset"] == ds for r in runs):
            st.caption(f"Questions of `{ds}`: {text}")
if data.viewer():        # read-only: no runs, imports or uploads, and nothing about the server's jobs
    st.info("Viewer mode: this dashboard shows the stores' runs; starting runs and importing files are off.",
            icon=":material/visibility:")
    st.stop()
st.caption(f"New runs and imports go to your store, `{MY_DB}` (the demo store is never written).")
try:
    CAP = jobs.limits()
except StoplineError as e:          # a limit set to something that is not a number
    st.error(str(e))
    st.stop()

tab_run, tab_import = st.tabs(["Start a run", "Import generations"], key="tab", bind="query-params")   # kept: a rerun (Show this run) and a link reopen it
with tab_run:
    from analysis.backend.models import PACKAGED
    engine = st.radio("Engine", ["In this process (transformers)", "A server (OpenAI-compatible: vLLM, SGLang, …)"],
                      horizontal=True, key="run_engine",
                      help="A server runs the model where you serve it; Stopline streams each trace and sends "
                           "the probes to the same server (docs/engines.md)")
    served = engine.startswith("A server")
    with st.form("new_run", enter_to_submit=False):      # Enter in a field is not a start
        c1, c2 = st.columns(2)
        if served:
            url = c1.text_input("Server URL(s)", "http://127.0.0.1:8000/v1", key="run_url",
                                help="its /v1 address; several replicas separated by commas")
            name = c1.text_input("Model name on the server", key="run_served", help="as GET /v1/models lists it")
            tokenizer = c2.text_input("Tokenizer", key="run_tokenizer",
                                      help="the served model's: a packaged name, a local folder or a hub id")
            api_key = c2.text_input("API key (if the server needs one)", type="password", key="run_key")
        else:
            model = c1.selectbox("Model", [*PACKAGED, "other (a local directory, .gguf file or hub id)"],
                                 key="run_model")
            other = c1.text_input("Other model", key="run_model_other", help="used when 'other' is picked")
        dirs = " or ".join(f"`{d.relative_to(jobs.ROOT) if d.is_relative_to(jobs.ROOT) else d}`"
                           for d in jobs.dataset_dirs())
        dataset = c2.text_input("Dataset", "rg:basic_arithmetic", key="run_dataset",
                                help=f"rg:<task>, gsm8k:PATH, nq-open:PATH, jsonl:PATH, …; a file must be in {dirs} "
                                     f"({jobs.DATASET_DIRS_ENV})")
        c3, c4, c5, c6 = st.columns(4)
        limit = c3.number_input("Questions", 1, CAP["questions"], min(20, CAP["questions"]), key="run_limit",
                                help=f"at most {CAP['questions']} from here ({jobs.LIMITS['questions'][0]})")
        every = c4.number_input("Checkpoint every N tokens", 4, 1024, 32, key="run_every")
        max_new = c5.number_input("Max new tokens", 16, max(16, CAP["tokens"]), min(256, max(16, CAP["tokens"])),
                                  key="run_max_new",
                                  help=f"at most {CAP['tokens']} from here ({jobs.LIMITS['tokens'][0]})")
        batch = c6.number_input("Questions at once" if served else "Batch size", 1, 512, 8, key="run_batch")
        go = st.form_submit_button("Start in the background", type="primary")
    st.caption(f"Limits of runs started here: {CAP['jobs']} job(s) at a time (up to {CAP['queued']} more wait "
               f"their turn), {CAP['questions']} questions and "
               f"{CAP['tokens']} new tokens each, dataset files from {dirs}. The command line "
               "(`python -m analysis run`) has none.")
    if go:
        if served:
            urls = [u.strip() for u in url.split(",") if u.strip()]
            eng = {"base_urls": urls, "tokenizer": tokenizer.strip() or name.strip(), "concurrency": int(batch),
                   "api_key": api_key or None}
            name = name.strip()
        else:
            name, eng = (other.strip() if model.startswith("other") else model), None
        if not name:
            st.error("Name the model on the server." if served else
                     "Name the model (a local directory, a .gguf file or a hub id).")
        else:
            try:
                busy = sum(j["state"] in jobs.ALIVE for j in jobs.list_jobs()) >= CAP["jobs"]
                jid = jobs.start_run(name, dataset.strip(), MY_DB, int(limit), int(every), int(max_new), int(batch),
                                     engine=eng)
                st.success(f"Queued job {jid}: it starts when a running one ends ({CAP['jobs']} at a time)." if busy
                           else f"Started job {jid}. Its progress shows below; the rest of the app stays usable.")
            except StoplineError as e:
                st.error(str(e))

    def show_job_run(run_id: str) -> None:
        data.show_run(MY_DB, run_id)
        st.session_state["jobs_show"] = True      # the panel reruns alone: it asks for the whole page

    @st.fragment(run_every=2)
    def job_panel():
        if st.session_state.pop("jobs_show", False):
            st.rerun(scope="app")
        js = jobs.list_jobs()
        if not js:
            st.caption("No jobs yet.")
            return
        done = {j["id"] for j in js if j["state"] not in jobs.ALIVE}
        seen = st.session_state.setdefault("jobs_ended", done)
        if done - seen:             # a job just ended: the whole page again, so the runs table shows its run
            st.session_state["jobs_ended"] = done
            st.rerun(scope="app")
        for j in js[:8]:
            with st.container(border=True):
                st.markdown(f"**{j['model']}** on **{j['dataset']}** · job `{j['id']}` · {j['state']}")
                if j["total"]:
                    st.progress(j["done"] / j["total"], text=f"{j['done']} of {j['total']} questions")
                if j["state"] == "done" and j["summary"]:
                    st.caption(j["summary"])
                    if j["run_id"] and j["db"] == MY_DB and data.picked_db() != MY_DB:
                        st.button("Show this run", key=f"show_{j['id']}", on_click=show_job_run,
                                  args=(j["run_id"],), help="picks 'My store' and this run in the sidebar")
                if j["error"]:
                    st.error(j["error"])
                elif j["state"] == "queued":
                    st.caption(f"Waiting for a free job slot ({CAP['jobs']} at a time, first come first served).")
                elif j["state"] == "running" and j["tail"]:
                    st.caption(j["tail"][-1][-200:])
                elif j["state"] == "stopped":
                    st.caption("Stopped. The questions it finished are in the store; the same run started again "
                               "resumes from them.")
                if j["state"] in jobs.ALIVE:
                    st.button("Stop" if j["state"] != "stopping" else "Stop now (kill)", key=f"stop_{j['id']}",
                              on_click=jobs.stop, args=(j["id"], None, j["state"] == "stopping"),
                              help="as Ctrl-C: what it finished is kept, and starting it again resumes")
    job_panel()

with tab_import:
    from analysis.core.answers import ANSWER_TYPES
    from analysis.ingest.importer import FORMATS, ImportSpec, import_generations, preview
    up = st.file_uploader(f"A file of generations: JSONL, a JSON document, CSV or Parquet (at most "
                          f"{data.upload_limit_mb()} MB)", type=["jsonl", "ndjson", "json", "csv", "tsv", "parquet"],
                          key="imp_file", max_upload_size=data.upload_limit_mb())
    if (too_big := data.upload_too_big(up)) is not None:
        st.error(too_big)
        up = None
    fmt = st.radio("Format", list(FORMATS), horizontal=True, key="imp_fmt",
                   help="jsonl: map the fields yourself (any file kind); lm-eval: --log_samples files; openai-chat: "
                        "request/response logs, reasoning included; checkpoints: per-checkpoint exports of other tools")
    dflt = {"jsonl": ("question", "answer", "response"), "lm-eval": ("doc.question", "target", "resps.0.0"),
            "openai-chat": ("", "gold", ""), "checkpoints": ("question", "answer", "")}[fmt]
    c1, c2, c3, c4 = st.columns(4)
    qf = c1.text_input("Question field", dflt[0], key=f"imp_q_{fmt}",
                       help="a dotted path, e.g. doc.question" + ("; empty: the last user message" if fmt == "openai-chat"
                                                                  else ""))
    gf = c2.text_input("Gold field", dflt[1], key=f"imp_g_{fmt}")
    rf = c3.text_input("Response field" if fmt != "checkpoints" else "Trace text field (optional)", dflt[2],
                       key=f"imp_r_{fmt}", help="e.g. outputs.solution", disabled=fmt == "openai-chat")
    idf = c4.text_input("Id field", "qid" if fmt == "checkpoints" else "", key=f"imp_id_{fmt}",
                        help="a question id (optional, except for checkpoints in long form)")
    ck = {}
    if fmt == "checkpoints":
        k1, k2, k3, k4, k5, k6 = st.columns(6)
        ck = {"position_field": k1.text_input("Position field", "tokens", key="imp_pos"),
              "answer_field": k2.text_input("Trial answer field", "answer", key="imp_ans"),
              "length_field": k3.text_input("Length field (optional)", key="imp_len") or None,
              "final_answer_field": k4.text_input("Final answer field (optional)", key="imp_final",
                                                  help="the model's own answer at full length; without it the last "
                                                       "checkpoint's trial answer stands for it") or None,
              "correct_field": k5.text_input("Correctness field (optional)", key="imp_ok") or None}
        sig = k6.text_input("Signals (NAME=FIELD, …)", key="imp_sig", help="p_mean, p_geo, p_min, p_first, entropy")
        ck["signals"] = dict(x.strip().split("=", 1) for x in sig.split(",") if "=" in x) or None
    s1, s2 = st.columns(2)          # the user's own production stopper, drawn as "your mechanism"
    ck["stop_field"] = s1.text_input("Your stopper's stop field (optional)", key="imp_stop",
                                     help="where your production stopper stopped each trace (tokens): the pages "
                                          "then show it as 'your mechanism' against every setting") or None
    ck["stopped_answer_field"] = s2.text_input("Its answer field (optional)", key="imp_stopped",
                                               help="what it answered there (default: the trial answer at that "
                                                    "point)") or None
    c5, c6, c7, c8, c9 = st.columns(5)
    mname = c5.text_input("Model name", key="imp_model")
    dname = c6.text_input("Dataset name", key="imp_dataset")
    atype = c7.selectbox("Answer type", ANSWER_TYPES, key="imp_type")
    records = c8.text_input("Records at (JSON document)", key="imp_records", help="e.g. results.tasks") or None
    tokenizer = c9.text_input("Tokenizer (optional)", key="imp_tok",
                              help="a directory or hub id; without it token counts are approximate word pieces") or None
    tmp = None
    if up is not None:
        tmp = Path(tempfile.mkdtemp()) / Path(up.name).name
        tmp.write_bytes(up.getvalue())
    try:
        if tmp is not None:
            spec = ImportSpec(path=str(tmp), model=mname, dataset=dname, question_field=qf or None,
                              gold_field=gf or None, response_field=rf or None, id_field=idf or None,
                              answer_type=atype, fmt=fmt, records=records, tokenizer=tokenizer,
                              limits=data.upload_read_limits(), **ck)
            pv = preview(spec)
            st.caption(f"{pv['n_records']} records; fields of the first ones: "
                       + ", ".join(f"`{k}`" for k in pv["fields"]) + ". What the import would read from them:")
            st.dataframe(pd.DataFrame(pv["rows"]).astype(str), hide_index=True, width="stretch")
        if up is not None and not (mname and dname):        # why Import is greyed out
            st.caption("Name the model and the dataset (above) to import: the run is filed under them.")
        if st.button("Import", type="primary", key="imp_go", disabled=up is None or not mname or not dname):
            res = import_generations(MY_DB, spec, show_progress=False)   # opened only once the file passed its checks
            verb = "Imported" if res["created"] else "Already imported as"
            st.success(f"{verb} run {res['run_id']}: {res['n_questions']} traces, {res['n_checkpoints']} checkpoints, "
                       f"EM at full length {res['em_full']:.3f}.")
            st.button("Show this run", key="imp_show", on_click=data.show_run, args=(MY_DB, res["run_id"]),
                      type="primary", help="picks 'My store' and this run in the sidebar, on every page")
    except StoplineError as e:
        st.error(str(e).replace(str(tmp), up.name if up is not None else ""))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp.parent, ignore_errors=True)      # the upload's copy and its folder
