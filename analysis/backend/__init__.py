"""The backend: models, generation with checkpoint probes (KV cache reused), runs written to the store."""
