"""Production: the live controller, verification, monitoring of decision logs, background jobs."""
