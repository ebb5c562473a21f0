"""Optional MLflow tracking through kedro-mlflow, active only where the run's configuration
environment has an `mlflow.yml` (conf/mlflow/, used with `kedro run --env mlflow`).

kedro-mlflow's own hook is auto-registered for every run once the package is installed and then
logs to ./mlruns by default; settings.py disables that registration and registers this wrapper,
so installing the `mlflow` extra changes nothing until the environment asks for tracking.
When active, kedro-mlflow logs the nodes' parameters, and this hook adds the numbers of the
metrics outputs (METRIC_OUTPUTS) as MLflow metrics and the saved adapter directory, adapter card
and reports (ARTIFACT_OUTPUTS) as artefacts, after each is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl

from vernacular.common.fileio import check_writable, exclusive_lock
from vernacular.common.storage import StorageLayout
from vernacular.verticals import VERTICALS, check_parameters

logger = logging.getLogger(__name__)

# Outputs whose numbers become MLflow metrics, by dataset name without the vertical's namespace.
METRIC_OUTPUTS = ("training_metrics", "eval_metrics", "cost_metrics", "ingestion_summary")
# Outputs whose saved file or folder (this run's version) becomes an MLflow artefact.
ARTIFACT_OUTPUTS = ("adapter", "adapter_card", "eval_summary", "cost_report")
_MLFLOW_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_METRICS_PER_OUTPUT = 5000


def mlflow_config_present(config_loader) -> bool:
    """Whether the environment (base + run env) holds a non-empty `mlflow*` config."""
    patterns = config_loader.config_patterns
    if "mlflow" not in patterns:
        patterns["mlflow"] = ["mlflow*", "mlflow*/**", "**/mlflow*"]
    try:
        return bool(config_loader["mlflow"])
    except MissingConfigException:
        return False


def numeric_leaves(data: Any, prefix: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Scalars and lists of numbers in nested JSON-like `data`: ({key: value}, {key: series}).

    Keys are dotted paths under `prefix`, with characters MLflow rejects replaced by `_`;
    booleans, strings, None and non-finite numbers are left out.
    """
    scalars: dict[str, float] = {}
    series: dict[str, list[float]] = {}

    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def walk(x: Any, key: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}.{_MLFLOW_KEY_BAD.sub('_', str(k))}")
        elif isinstance(x, (list, tuple)):
            if x and all(is_number(v) for v in x):
                series[key] = [float(v) for v in x]
        elif is_number(x):
            scalars[key] = float(x)

    walk(data, _MLFLOW_KEY_BAD.sub("_", prefix))
    return scalars, series


def saved_path(dataset) -> Path | None:
    """Where `dataset` wrote this run's version: <filepath>/<save version>/<name> (Kedro's layout),
    or its plain filepath when it is not versioned."""
    try:
        if hasattr(dataset, "resolve_save_version"):
            return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
        return Path(str(dataset._filepath))
    except Exception as exc:  # noqa: BLE001 (tracking must never fail the run)
        logger.warning("cannot resolve the saved path of %s (%s)", dataset, exc)
        return None


class OptionalMlflowHook:
    """kedro-mlflow's MlflowHook behind an on-switch (an `mlflow.yml` in the run's environment)."""

    def __init__(self) -> None:
        self._inner = None
        self._catalog = None

    @property
    def active(self) -> bool:
        return self._inner is not None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._inner = None
        if not mlflow_config_present(context.config_loader):
            return
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
        except ImportError as exc:
            env = context.env or "local"
            raise ImportError(
                f"the configuration (conf/base or conf/{env}) has an mlflow.yml, but kedro-mlflow is not "
                f"installed: pip install -e '.[mlflow]', or run without --env {env}."
            ) from exc
        self._inner = MlflowHook()
        self._inner.after_context_created(context=context)

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version,
                              load_versions) -> None:
        if self.active:
            self._catalog = catalog
            self._inner.after_catalog_created(catalog=catalog, conf_catalog=conf_catalog, conf_creds=conf_creds,
                                              parameters=parameters, save_version=save_version,
                                              load_versions=load_versions)

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.active:
            self._catalog = catalog
            self._inner.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def before_node_run(self, node, catalog, inputs, is_async) -> None:
        if self.active:
            self._inner.before_node_run(node=node, catalog=catalog, inputs=inputs, is_async=is_async)

    @hook_impl
    def after_dataset_saved(self, dataset_name, data, node) -> None:
        # Not after_node_run: Kedro calls that before the outputs are written.
        if not (self.active and self._inner._is_mlflow_enabled and self._inner.run_id and self._catalog is not None):
            return
        try:
            self._log_output(self._catalog, dataset_name, data, self._inner.run_id)
        except Exception as exc:  # noqa: BLE001 (tracking must never fail a finished node)
            logger.warning("MLflow logging of %s failed: %s", dataset_name, exc)

    def _log_output(self, catalog, name: str, data: Any, run_id: str) -> None:
        import mlflow  # optional (the `mlflow` extra): imported only when tracking is on
        from mlflow.entities import Metric

        short = name.rsplit(".", 1)[-1]
        if short in METRIC_OUTPUTS and isinstance(data, dict):
            scalars, series = numeric_leaves(data, name)
            if len(scalars) + sum(map(len, series.values())) > _MAX_METRICS_PER_OUTPUT:
                logger.warning("%s: more than %d numbers; logging its scalars only", name, _MAX_METRICS_PER_OUTPUT)
                series = {}
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in scalars.items()]
            metrics += [Metric(k, v, now, step) for k, values in series.items() for step, v in enumerate(values)]
            client = mlflow.MlflowClient()
            for start in range(0, len(metrics), 1000):  # MLflow's per-request limit
                client.log_batch(run_id, metrics=metrics[start:start + 1000])
        if short in ARTIFACT_OUTPUTS:
            path = saved_path(catalog.get(name))
            if path is not None and path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=name, run_id=run_id)
            elif path is not None and path.is_file():
                mlflow.log_artifact(str(path), artifact_path=name, run_id=run_id)
            else:
                logger.warning("%s: saved file not found (%s); not logged to MLflow", name, path)

    @hook_impl
    def after_pipeline_run(self, run_params, pipeline, catalog) -> None:
        if self.active:
            self._inner.after_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        if self.active:
            self._inner.on_pipeline_error(error=error, run_params=run_params, pipeline=pipeline, catalog=catalog)


mlflow_hook = OptionalMlflowHook()


class RunGuardHook:
    """Before the first node of a run: validates the parameter block of every vertical the run
    touches, then takes each vertical's run lock until the run ends.

    A misspelled or mistyped key at any level (`radiology.trainig`, `radiology.source.pth`,
    `radiology.training.epochs: "two"`) stops `kedro run` at once with the full key name instead of
    being ignored or failing an hour into training. A second `kedro run` of the same vertical (same
    storage name) stops at once instead of mixing its files with the first's.
    """

    def __init__(self) -> None:
        self._locks = contextlib.ExitStack()

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        inputs = {i for n in pipeline.nodes for i in n.inputs}
        used = [v for v in VERTICALS if any(i.startswith(f"params:{v}.") for i in inputs)]
        if not used:
            return
        _refuse_runtime_paths(run_params.get("runtime_params") or {}, used)
        checked = check_parameters(catalog.load("parameters"), used)
        logger.info("parameters of %s checked", ", ".join(used))
        self._locks.close()  # a previous run in this process that ended without its hooks
        for vertical, settings in checked.items():
            layout = StorageLayout.for_vertical(vertical, settings.storage)
            self._locks.enter_context(exclusive_lock(layout.run_lock, f"`kedro run` of {vertical}"))
        try:
            check_outputs_writable(pipeline, catalog)
        except OSError:
            self._locks.close()
            raise

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._locks.close()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._locks.close()


run_guard_hook = RunGuardHook()


def check_outputs_writable(pipeline, catalog) -> None:
    """Every local file output of the run can be written, checked before the first node: a run never
    saves some outputs of a node (a manifest) and then fails on the next (its quarantine report)."""
    checked: set[Path] = set()
    for name in sorted(pipeline.all_outputs()):
        dataset = catalog.get(name)
        filepath = getattr(dataset, "_filepath", None)
        if filepath is None or (getattr(dataset, "_protocol", None) or "file") != "file":
            continue  # in memory, or remote storage (checked by its own client)
        folder = Path(str(filepath))
        if folder in checked:
            continue
        checked.add(folder)
        try:
            check_writable(folder)
        except OSError as exc:
            raise OSError(exc.errno, f"output {name} cannot be saved: {exc.strerror}; fix the folder's "
                                     "permissions or its mount (or point the catalog entry elsewhere) and run again")

# Where a run writes, and extra folders it reads and writes audio in: settable in conf/ only, never by
# a caller of `kedro run --params` or of `kedro server`'s POST /run (docs/reliability.md).
RUNTIME_FORBIDDEN = (("storage",), ("evaluation", "forgetting", "cache_dir"))


def _refuse_runtime_paths(runtime_params: dict, verticals) -> None:
    for vertical in verticals:
        block = runtime_params.get(vertical) or {}
        for path in RUNTIME_FORBIDDEN:
            value = block
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                raise ValueError(f"{vertical}.{'.'.join(path)} cannot be set at run time (--params or POST /run): "
                                 f"storage paths come from conf/ only; set it in conf/local/parameters.yml")
