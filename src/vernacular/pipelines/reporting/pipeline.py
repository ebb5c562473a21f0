from kedro.pipeline import Pipeline, node, pipeline

from .nodes import report_costs, write_adapter_card


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(report_costs, ["training_metrics", "eval_metrics", "params:prices", "params:cost", "params:vertical"],
             ["cost_report", "cost_plot", "cost_report_html", "cost_metrics"], name="report_costs", tags=["reporting"]),
        node(write_adapter_card, ["ingestion_summary", "manifest", "base_model", "training_metrics", "eval_metrics",
                                  "params:source", "params:card", "params:vertical"], "adapter_card", name="write_adapter_card", tags=["reporting"]),
    ])
