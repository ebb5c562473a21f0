"""The reporting stage."""
