"""Hardening checks: fuzzed input, concurrency, privacy of logs, security; each reports figures."""
