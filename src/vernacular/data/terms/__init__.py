"""Packaged domain-term lists (one term per line) for `evaluation.key_terms`."""
