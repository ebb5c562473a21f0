from kedro.pipeline import Pipeline, node, pipeline

from .nodes import load_source, split_corpus, validate_corpus


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(load_source, ["params:source", "params:split", "params:storage", "params:vertical"], "raw_manifest",
             name="load_source", tags=["ingestion"]),
        node(validate_corpus, ["raw_manifest", "params:audio_limits", "params:storage", "params:vertical"],
             ["clean_manifest", "validation_quarantine"], name="validate_corpus", tags=["ingestion"]),
        node(split_corpus, ["clean_manifest", "validation_quarantine", "raw_manifest", "params:split"],
             ["manifest", "quarantine", "ingestion_summary"], name="split_corpus", tags=["ingestion"]),
    ])
