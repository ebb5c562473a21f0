from kedro.pipeline import Pipeline, node, pipeline

from .nodes import train_adapter


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(train_adapter, ["base_model", "features_index", "params:training", "params:adapter",
                             "params:augmentation", "params:evaluation", "params:transcription", "params:storage",
                             "params:vertical"],
             ["adapter", "training_metrics"], name="train_adapter", tags=["training"]),
    ])
