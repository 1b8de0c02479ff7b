"""Triton kernels for Fathom, each with a plain-torch reference (see capabilities.py for when they run)."""
