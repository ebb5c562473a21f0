"""Project pipelines: one namespaced variant of the stage pipelines per vertical."""

from __future__ import annotations

from kedro.pipeline import Pipeline, pipeline

from vernacular.pipelines.evaluation import pipeline as evaluation
from vernacular.pipelines.features import pipeline as features
from vernacular.pipelines.ingestion import pipeline as ingestion
from vernacular.pipelines.reporting import pipeline as reporting
from vernacular.pipelines.training import pipeline as training
from vernacular.pipelines.transcription import pipeline as transcription
from vernacular.verticals import VERTICALS


# Parameters shared by every vertical (not namespaced).
SHARED_PARAMETERS = {"params:prices": "params:prices"}


def stage_pipelines() -> dict[str, Pipeline]:
    return {
        "ingestion": ingestion.create_pipeline(),
        "features": features.create_pipeline(),
        "training": training.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "reporting": reporting.create_pipeline(),
    }


def namespaced(base: Pipeline, vertical: str) -> Pipeline:
    shared = {k: v for k, v in SHARED_PARAMETERS.items() if k in base.inputs()}
    return pipeline(base, namespace=vertical, parameters=shared)


def vertical_pipeline(vertical: str) -> Pipeline:
    return namespaced(sum(stage_pipelines().values(), Pipeline([])), vertical)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {}
    for vertical in VERTICALS:
        pipelines[vertical] = vertical_pipeline(vertical)
        for stage, stage_pipeline in stage_pipelines().items():
            pipelines[f"{vertical}.{stage}"] = namespaced(stage_pipeline, vertical)
        # Uses a trained adapter, so it is not part of `<vertical>` or `__default__` (which train).
        pipelines[f"{vertical}.transcribe"] = namespaced(transcription.create_pipeline(), vertical)
    pipelines["__default__"] = sum((pipelines[v] for v in VERTICALS), Pipeline([]))
    return pipelines
