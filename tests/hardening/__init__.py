"""Hardening checks (issue 5): fuzzed input, concurrency, privacy of logs, security; each reports figures."""
