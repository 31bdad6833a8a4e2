"""The bottom layer: errors, column and checkpoint names, the store and its migrations, answer types."""
