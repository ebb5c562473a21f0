"""Operational helpers that are not part of a pipeline (documentation screenshots, DAG templates)."""
