"""Presets: the schema and its URL codec, and routing (which setting a request or question gets)."""
