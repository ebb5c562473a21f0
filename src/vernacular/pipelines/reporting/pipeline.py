from kedro.pipeline import Pipeline, node, pipeline

from .nodes import report_costs


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(report_costs, ["training_metrics", "eval_metrics", "params:prices", "params:cost", "params:vertical"],
             ["cost_report", "cost_plot", "cost_metrics"], name="report_costs"),
    ])
