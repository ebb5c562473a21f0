"""The ingestion stage."""
