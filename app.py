"""Stopline dashboard: navigation and the shared pickers. Pages are thin and call analysis/."""
import streamlit as st

st.set_page_config(page_title="Stopline", page_icon=":material/stop_circle:", layout="wide")

from views import common  # noqa: E402

common.access_gate()        # a login first, when one is configured (docs/security.md)
common.sidebar_pickers()
# the default page is served at the root but still reserves a path, which must not be "frontier" (taken below)
frontier = st.Page("views/frontier.py", title="Frontier", icon=":material/show_chart:", default=True,
                   url_path="frontier-default")


def frontier_by_name():
    """``/frontier``: the default page lives at the root, so its name leads there, with the link's state."""
    st.switch_page(frontier, query_params=st.query_params.to_dict())


nav = st.navigation([
    frontier,
    st.Page("views/tune.py", title="Tune", icon=":material/tune:"),
    st.Page("views/questions.py", title="Questions", icon=":material/quiz:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("views/presets.py", title="Presets", icon=":material/bookmarks:"),
    st.Page("views/report.py", title="Report", icon=":material/summarize:"),
    st.Page("views/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("views/monitor.py", title="Monitor", icon=":material/monitor_heart:"),
    st.Page(frontier_by_name, title="Frontier", url_path="frontier", visibility="hidden"),
])
nav.run()
