"""Stopline dashboard: navigation and the shared pickers. Pages are thin and call analysis/."""
import streamlit as st

st.set_page_config(page_title="Stopline", page_icon=":material/stop_circle:", layout="wide")

from views import common  # noqa: E402

common.access_gate()        # a login first, when one is configured (docs/security.md)
common.sidebar_pickers()
nav = st.navigation([
    st.Page("views/frontier.py", title="Frontier", icon=":material/show_chart:", default=True),
    st.Page("views/tune.py", title="Tune", icon=":material/tune:"),
    st.Page("views/questions.py", title="Questions", icon=":material/quiz:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/presets.py", title="Presets", icon=":material/bookmarks:"),
    st.Page("views/report.py", title="Report", icon=":material/summarize:"),
    st.Page("views/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("views/monitor.py", title="Monitor", icon=":material/monitor_heart:"),
])
nav.run()
