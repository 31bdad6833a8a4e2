"""Runs: what the store holds, and how to add more."""
import pandas as pd
import streamlit as st

st.header("Runs")
runs = st.session_state.get("runs") or []
if not runs:
    st.info("This store has no runs yet.")
else:
    df = pd.DataFrame([{k: r[k] for k in ("id", "model", "dataset", "source", "status", "n_questions",
                                          "n_checkpoints", "em_full", "mean_tokens")} for r in runs])
    st.dataframe(df, hide_index=True, width="stretch")
st.subheader("Add runs")
st.code("python -m analysis run --model smollm2-135m-instruct --dataset rg:basic_arithmetic --limit 50\n"
        "python -m analysis import FILE.jsonl --response-field response --model M --dataset D", language="bash")
