"""Shared low-level operations for the stages above: the dense CRF and the one process pool."""
