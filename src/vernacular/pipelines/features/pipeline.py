from kedro.pipeline import Pipeline, node, pipeline

from .nodes import build_features, prepare_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(prepare_base_model, "params:model", "base_model", name="prepare_base_model"),
        node(build_features, ["manifest", "base_model", "params:features", "params:storage"], "features_index",
             name="build_features"),
    ])
