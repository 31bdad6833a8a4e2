"""Runs into the store: dataset adapters, imports, generation from a model (pipeline), demo, rescore."""
