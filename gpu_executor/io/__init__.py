"""Executor I/O: input files materialised from inline bytes, the object store, or vetted http(s) URLs."""
