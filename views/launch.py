"""Start the dashboard with the pages' modules already imported, so the first visitor does not wait for
them: ``python -m analysis dashboard [streamlit options]`` (or ``python views/launch.py``).

``streamlit run app.py`` works too; it imports pandas, Plotly, DuckDB and the analysis core during the first
page's script run instead (about half a second on a 2-core CPU, see docs/benchmarks.md)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("numpy", "pandas", "pyarrow.parquet", "duckdb", "plotly.graph_objects", "plotly.io", "scipy.stats",
           "analysis.core.store", "analysis.replay.engine", "analysis.evaluate.frontier", "analysis.replay.policies", "analysis.presets.schema",
           "analysis.evaluate.stats", "analysis.evaluate.compare")


def main(argv: list[str]) -> int:
    import importlib
    sys.path.insert(0, str(ROOT))
    for m in PRELOAD:
        importlib.import_module(m)
    from streamlit.web import cli
    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *argv]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
