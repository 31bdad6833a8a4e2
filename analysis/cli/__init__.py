"""``python -m analysis`` / ``stopline``: the parser and one module per command group."""
