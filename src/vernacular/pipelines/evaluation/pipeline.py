from kedro.pipeline import Pipeline, node, pipeline

from .nodes import evaluate_on_test


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(evaluate_on_test, ["manifest", "base_model", "adapter", "training_metrics", "params:evaluation",
                                "params:transcription", "params:vertical", "params:storage"],
             ["eval_metrics", "eval_summary", "transcripts", "wer_plot", "utterance_scatter", "eval_report_html"],
             name="evaluate_on_test", tags=["evaluation"]),
    ])
