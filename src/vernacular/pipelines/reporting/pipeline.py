from kedro.pipeline import Pipeline, node, pipeline

from .card import write_adapter_card
from .nodes import report_costs


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(report_costs, ["training_metrics", "eval_metrics", "params:prices", "params:cost", "params:vertical"],
             ["cost_report", "cost_plot", "cost_report_html", "cost_metrics"], name="report_costs"),
        node(write_adapter_card, ["ingestion_summary", "manifest", "base_model", "training_metrics", "eval_metrics",
                                  "params:source", "params:vertical"], "adapter_card", name="write_adapter_card"),
    ])
