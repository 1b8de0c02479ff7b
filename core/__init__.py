"""Fathom's shared core: the MoE layer, retrieval, training, serving, monitoring and privacy."""
