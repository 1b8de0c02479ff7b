"""Fathom's applications: thin recipes, services, pages, CLI and benchmarks over the core."""
