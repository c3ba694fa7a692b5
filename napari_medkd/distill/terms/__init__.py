"""Distillation terms. ``registry.TERMS`` imports every public module of this package on first use,
so a new term is one new file here (plus, optionally, a preset line in ``distill/methods.py``)."""
