"""Benchmarks behind ``fathom bench <area>``; every area writes the JSON shape of DESIGN.md."""
