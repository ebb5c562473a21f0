from kedro.pipeline import Pipeline, node, pipeline

from .nodes import transcribe_inbox


def create_pipeline(**kwargs) -> Pipeline:
    # Not part of the training pipeline: registered on its own as `<vertical>.transcribe`.
    return pipeline([
        node(transcribe_inbox, ["inbox", "base_model", "adapter", "params:transcription", "params:storage",
                                "params:vertical"], "transcription_summary", name="transcribe_inbox"),
    ])
