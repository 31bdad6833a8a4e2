"""Replay: a run as a RunTable, the policy families, and the vectorised stop of a setting."""
