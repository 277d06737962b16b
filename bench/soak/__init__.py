"""python -m bench.soak: a long mixed load on one running service, checked for drift."""
