"""Stopline's analysis core: store, datasets, answer checking, import, backend, policies, replay, statistics.

Importable without Streamlit; the dashboard (app.py, pages/) and the CLI (``python -m analysis``) sit on top.
"""
__version__ = "0.1.0"
