from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_features, prepare_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(prepare_base_model, ["params:model", "params:storage", "params:vertical"], "base_model",
             name="prepare_base_model", tags=["features"]),
        node(build_features, ["manifest", "base_model", "params:features", "params:storage", "params:vertical"],
             "features_index", name="build_features", tags=["features"]),
    ])
