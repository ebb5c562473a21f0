from kedro.pipeline import Pipeline, node, pipeline

from .nodes import evaluate_on_test


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(evaluate_on_test, ["manifest", "base_model", "adapter", "training_metrics", "params:evaluation",
                                "params:vertical"], ["eval_metrics", "eval_summary", "transcripts"],
             name="evaluate_on_test"),
    ])
