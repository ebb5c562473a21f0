"""Operations: Airflow DAGs from `kedro airflow create`, the `kedro viz build` graph and its screenshot.

Airflow is not a dependency: each generated DAG file is compiled and executed against a small
recording stand-in for `airflow.sdk` (dag/task decorators, `>>`), which yields the DAG's settings,
task ids, shell commands and edges. With AIRFLOW_PYTHON set to an interpreter that has
apache-airflow installed, the files are also loaded by Airflow's own DagBag.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from tests.paths import REPO

KEDRO = str(Path(sys.executable).with_name("kedro"))
TEMPLATE = REPO / "tools" / "airflow_dag.j2"
VERTICALS = ("radiology", "finance", "accent")
DAG_PIPELINES = [f"{v}.transcribe" for v in VERTICALS] + list(VERTICALS)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "KEDRO_DISABLE_TELEMETRY": "1"}


def _kedro(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([KEDRO, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"kedro {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def registry():
    from vernacular.pipeline_registry import register_pipelines

    return register_pipelines()


def _copy_project(root: Path) -> Path:
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "conf" / "base", root / "conf" / "base")
    (root / "conf" / "local").mkdir()
    return root


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory) -> Path:
    """The project's code and base config in a temporary folder, so builds never touch the checkout."""
    return _copy_project(tmp_path_factory.mktemp("project"))


# ------------------------------------------------------------------ Airflow


class _Recorder:
    """Stand-in for `airflow.sdk`: records what a DAG file declares when it is executed."""

    def __init__(self):
        self.dags: dict[str, dict] = {}
        self._current: dict | None = None

    def module(self) -> types.ModuleType:
        recorder = self
        sdk = types.ModuleType("airflow.sdk")

        class Task:
            def __init__(self, task_id, command, op_kwargs):
                self.task_id, self.command, self.op_kwargs = task_id, command, op_kwargs

            def __rshift__(self, other):
                recorder._current["edges"].add((self.task_id, other.task_id))
                return other

        def dag(**kwargs):
            def decorate(fn):
                def build():
                    recorder._current = {"kwargs": kwargs, "tasks": {}, "edges": set(), "function": fn.__name__}
                    fn()
                    assert kwargs["dag_id"] not in recorder.dags, f"duplicate dag_id {kwargs['dag_id']}"
                    recorder.dags[kwargs["dag_id"]] = recorder._current
                return build
            return decorate

        def bash(**op_kwargs):
            def decorate(fn):
                def instantiate():
                    command = fn()
                    assert isinstance(command, str) and command, f"{fn.__name__} returned no command"
                    task = Task(op_kwargs["task_id"], command, op_kwargs)
                    recorder._current["tasks"][task.task_id] = task
                    return task
                return instantiate
            return decorate

        sdk.dag = dag
        sdk.task = types.SimpleNamespace(bash=bash)
        return sdk


@pytest.fixture(scope="module")
def dag_folder(project_copy) -> Path:
    pytest.importorskip("kedro_airflow", reason="kedro-airflow is in the test extra")
    out = project_copy / "airflow_dags"
    _kedro(["airflow", "create", "-j", str(TEMPLATE), f"--pipelines={','.join(DAG_PIPELINES)}",
            "-t", str(out), "--params", f"project_path={project_copy}"], cwd=project_copy)
    return out


def _airflow_config() -> dict:
    return yaml.safe_load((REPO / "conf" / "base" / "airflow.yml").read_text())


def _load_dags(folder: Path, monkeypatch) -> dict[str, dict]:
    recorder = _Recorder()
    airflow = types.ModuleType("airflow")
    airflow.sdk = recorder.module()
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, "airflow.sdk", airflow.sdk)
    for i, path in enumerate(sorted(folder.glob("*.py"))):
        source = path.read_text()
        compile(source, str(path), "exec")  # a SyntaxError names the file
        spec = importlib.util.spec_from_file_location(f"_vernacular_dag_{i}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return recorder.dags


def test_airflow_yml_names_only_registered_pipelines(registry):
    config = _airflow_config()
    assert "default" in config
    unknown = set(config) - {"default"} - set(registry)
    assert not unknown, f"conf/base/airflow.yml has blocks for unregistered pipelines: {unknown}"
    for name in DAG_PIPELINES:
        assert config.get(name, {}).get("schedule"), f"{name} has no schedule in airflow.yml"


def test_generated_dags_name_every_node_with_its_dependencies(dag_folder, registry, monkeypatch):
    from slugify import slugify

    config = _airflow_config()
    dags = _load_dags(dag_folder, monkeypatch)
    assert len(list(dag_folder.glob("*.py"))) == len(DAG_PIPELINES)
    assert set(dags) == {slugify(f"vernacular-{name}") for name in DAG_PIPELINES}

    for name in DAG_PIPELINES:
        pipeline = registry[name]
        dag = dags[slugify(f"vernacular-{name}")]
        settings = {**config["default"], **config.get(name, {})}
        kwargs = dag["kwargs"]
        assert kwargs["schedule"] == settings["schedule"]
        assert kwargs["start_date"].timetuple()[:3] == tuple(settings["start_date"])
        assert kwargs["max_active_runs"] == settings["max_active_runs"]
        assert kwargs["catchup"] is settings["catchup"]
        assert kwargs["default_args"]["retries"] == settings["retries"]
        assert kwargs["default_args"]["retry_delay"].total_seconds() == 60 * settings["retry_delay"]

        by_node = {slugify(n.name): n.name for n in pipeline.nodes}
        assert set(dag["tasks"]) == set(by_node), f"{name}: tasks differ from the pipeline's nodes"
        expected_edges = {(slugify(parent.name), slugify(child.name))
                          for child, parents in pipeline.node_dependencies.items() for parent in parents}
        assert dag["edges"] == expected_edges
        for task_id, task in dag["tasks"].items():
            command = task.command.split()
            assert command[0].endswith(".venv/bin/kedro") and command[1] == "run"
            assert f"--pipeline={name}" in command and f"--nodes={by_node[task_id]}" in command
            # the command's node selection resolves in the registry, as `kedro run` will resolve it
            assert len(pipeline.only_nodes(by_node[task_id]).nodes) == 1
            assert task.op_kwargs["cwd"] == str(dag_folder.parent)
            assert task.op_kwargs["env"]["HF_HUB_OFFLINE"] == "1"


def test_no_node_hands_data_to_another_in_memory(project_copy, monkeypatch):
    """Each Airflow task is its own `kedro run`: an in-memory hand-off between nodes would be lost."""
    pytest.importorskip("kedro_airflow", reason="kedro-airflow is in the test extra")
    from kedro.framework.project import pipelines
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro_airflow.grouping import get_memory_datasets

    monkeypatch.chdir(project_copy)
    bootstrap_project(project_copy)
    with KedroSession.create(project_path=project_copy) as session:
        catalog = session.load_context().catalog
    for name in DAG_PIPELINES:
        pipeline = pipelines[name]
        produced = {o for n in pipeline.nodes for o in n.outputs}
        consumed = {i for n in pipeline.nodes for i in n.inputs}
        handed_over = get_memory_datasets(catalog, pipeline) & produced & consumed
        assert not handed_over, f"{name}: {sorted(handed_over)} pass between nodes in memory; add them to catalog.yml"


def test_generated_dags_import_in_real_airflow(dag_folder):
    """Runs only where AIRFLOW_PYTHON points at an interpreter with apache-airflow 3 installed."""
    python = os.environ.get("AIRFLOW_PYTHON")
    if not python:
        pytest.skip("set AIRFLOW_PYTHON to a Python with apache-airflow installed to load the DAGs in Airflow")
    script = (
        "import json, sys\n"
        "try:\n"
        "    from airflow.dag_processing.dagbag import DagBag\n"
        "except ImportError:\n"
        "    from airflow.models.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "                  'dags': {d: sorted(t.task_id for t in bag.dags[d].tasks) for d in bag.dags}}))\n"
    )
    home = dag_folder.parent / "airflow-home"
    done = subprocess.run([python, "-c", script, str(dag_folder)], capture_output=True, text=True, timeout=300,
                          env={**ENV, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert len(report["dags"]) == len(DAG_PIPELINES)


# ------------------------------------------------------------------ kedro-viz


@pytest.fixture(scope="module")
def viz_build(project_copy) -> Path:
    pytest.importorskip("kedro_viz", reason="kedro-viz is in the test extra")
    _kedro(["viz", "build"], cwd=project_copy)
    build = project_copy / "build"
    assert (build / "index.html").is_file() and (build / "api" / "main").is_file()
    return build


def _versioned_datasets() -> list[str]:
    catalog = yaml.safe_load((REPO / "conf" / "base" / "catalog.yml").read_text())
    return [name for name, entry in catalog.items()
            if isinstance(entry, dict) and entry.get("versioned") and "{vertical}" in name]


def test_viz_build_shows_stages_namespaces_and_versioned_datasets(viz_build, registry):
    from vernacular.pipeline_registry import stage_pipelines

    graph = json.loads((viz_build / "api" / "main").read_text())
    pipelines = {p["id"] for p in graph["pipelines"]}
    stages = list(stage_pipelines())
    for vertical in VERTICALS:
        assert {vertical, f"{vertical}.transcribe", *(f"{vertical}.{s}" for s in stages)} <= pipelines
        assert vertical in graph["modular_pipelines"]
    modular = {n["name"] for n in graph["nodes"] if n["type"] == "modularPipeline"}
    assert modular == set(VERTICALS)

    # every task of every vertical's pipeline is drawn inside its vertical's namespace
    for vertical in VERTICALS:
        drawn = {n["name"] for n in graph["nodes"]
                 if n["type"] == "task" and vertical in n["modular_pipelines"] and vertical in n["pipelines"]}
        assert drawn == {n.name.rsplit(".", 1)[-1] for n in registry[vertical].nodes}

    nodes = {(n["type"], n["name"]): n for n in graph["nodes"]}

    versioned = _versioned_datasets()
    assert versioned, "catalog.yml declares no versioned dataset factories"
    used = {d for v in VERTICALS for d in registry[v].datasets()}
    checked = 0
    for pattern in versioned:
        for vertical in VERTICALS:
            name = pattern.replace("{vertical}", vertical)
            if name not in used:
                continue
            node = nodes.get(("data", name))
            assert node is not None, f"versioned dataset {name} is not in the viz graph"
            assert vertical in node["modular_pipelines"]
            meta = json.loads((viz_build / "api" / "nodes" / node["id"]).read_text())
            assert f"/{vertical}/" in meta["filepath"]
            checked += 1
    assert checked >= len(VERTICALS)

    # the layer toggle works (kedro-viz turns it off when the layers form a cycle): every dataset has a
    # layer, and the bands follow the stages
    layers = graph["layers"]
    assert set(layers) == {"raw", "intermediate", "primary", "feature", "models", "model_output", "reporting"}
    stages = ["intermediate", "primary", "feature", "models", "model_output", "reporting"]
    assert [layer for layer in layers if layer in stages] == stages
    datasets = [n for n in graph["nodes"] if n["type"] == "data"]
    assert datasets and all(n.get("layer") in graph["layers"] for n in datasets), \
        [n["name"] for n in datasets if not n.get("layer")]
    assert nodes[("data", "radiology.adapter")]["layer"] == "models"


def test_viz_build_page_rendered_in_headless_chromium(viz_build, registry, tmp_path):
    from tools.viz_screenshot import capture, find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    out = tmp_path / "viz.png"
    result = capture(viz_build, out, pipeline="radiology", window=(1000, 800), timeout_s=240)
    tasks = {n.name.rsplit(".", 1)[-1] for n in registry["radiology"].nodes}
    assert tasks <= set(result["labels"])
    assert {d for d in registry["radiology"].outputs()} <= set(result["labels"])
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1000, 800)
    # the view `kedro viz run` opens (no pipeline chosen): every vertical, collapsed to one node
    collapsed = capture(viz_build, tmp_path / "default.png", pipeline=None, window=(1000, 800), timeout_s=240)
    assert set(VERTICALS) <= set(collapsed["labels"]) and set(collapsed["expected_tasks"]) == set(VERTICALS)


def test_viz_screenshot_refuses_bad_input(viz_build, tmp_path):
    from tools.viz_screenshot import VizScreenshotError, capture, pipeline_task_names, read_graph

    with pytest.raises(VizScreenshotError, match="kedro viz build"):
        read_graph(tmp_path / "no-build")
    with pytest.raises(VizScreenshotError, match="no-such-pipeline"):
        pipeline_task_names(read_graph(viz_build), "no-such-pipeline")
    existing = tmp_path / "kept.png"
    existing.write_bytes(b"user's file")
    with pytest.raises(VizScreenshotError, match="--overwrite"):
        capture(viz_build, existing)
    assert existing.read_bytes() == b"user's file"


# ------------------------------------------------------------------ MLflow (opt-in)


def test_mlflow_is_enabled_only_by_an_environment_with_mlflow_yml():
    from kedro.config import OmegaConfigLoader

    from vernacular.hooks import mlflow_config_present

    def loader(env):
        return OmegaConfigLoader(conf_source=str(REPO / "conf"), base_env="base", default_run_env="local", env=env)

    assert not mlflow_config_present(loader("local"))
    enabled = loader("mlflow")
    assert mlflow_config_present(enabled)
    config = enabled["mlflow"]
    assert config["server"]["mlflow_tracking_uri"].startswith("sqlite:///")  # no server needed


def test_numeric_leaves_become_metric_keys_and_series():
    from vernacular.hooks import numeric_leaves

    data = {"wer": 0.25, "ok": True, "device": "cpu", "missing": None, "nan": float("nan"),
            "by_speaker": {"en-us+m3": {"wer": 0.5}}, "losses": [1.5, 1.0, 0.75], "rows": [{"a": 1}]}
    scalars, series = numeric_leaves(data, "radiology.eval_metrics")
    assert scalars == {"radiology.eval_metrics.wer": 0.25, "radiology.eval_metrics.by_speaker.en-us_m3.wer": 0.5}
    assert series == {"radiology.eval_metrics.losses": [1.5, 1.0, 0.75]}


def _session(project_copy, env, runtime_params=None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    shutil.copytree(REPO / "conf" / "mlflow", project_copy / "conf" / "mlflow", dirs_exist_ok=True)
    bootstrap_project(project_copy)
    return KedroSession.create(project_path=project_copy, env=env, runtime_params=runtime_params)


def test_default_environment_runs_without_mlflow(project_copy, monkeypatch):
    from vernacular.hooks import mlflow_hook

    monkeypatch.chdir(project_copy)
    with _session(project_copy, env=None) as session:
        session.load_context()
    assert not mlflow_hook.active
    assert not (project_copy / "mlflow.db").exists() and not (project_copy / "mlruns").exists()


def test_mlflow_environment_without_kedro_mlflow_says_how_to_install(project_copy, monkeypatch):
    if importlib.util.find_spec("kedro_mlflow") is not None:
        pytest.skip("kedro-mlflow is installed here")
    monkeypatch.chdir(project_copy)
    with _session(project_copy, env="mlflow") as session:
        with pytest.raises(ImportError, match=r"\.\[mlflow\]"):
            session.load_context()


@pytest.mark.slow
def test_mlflow_environment_logs_params_metrics_and_adapter(tmp_path, monkeypatch, request):
    """A tiny radiology run with `--env mlflow` (needs the `mlflow` extra; a few minutes on 2 CPU cores)."""
    pytest.importorskip("kedro_mlflow", reason="the mlflow extra is not installed")
    import mlflow

    embedded_base = request.getfixturevalue("embedded_base")  # converted only when the test runs

    project = _copy_project(tmp_path)
    monkeypatch.chdir(project)
    tiny = {"radiology": {
        "source": {"max_sentences": 18},
        "model": {"cache_dir": str(Path(embedded_base["local_dir"]).parent)},
        "training": {"max_steps": 2, "batch_size": 4, "progress": False},
        "evaluation": {"max_utterances": 4, "latency_segments": 1, "latency_repeats": 1, "progress": False},
    }}
    with _session(project, env="mlflow", runtime_params=tiny) as session:
        session.run(pipeline_name="radiology")

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vernacular")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["radiology.training.max_steps"] == "2"
    assert 0 <= run.data.metrics["radiology.eval_metrics.adapter.normalised.wer"]
    assert len(client.get_metric_history(run.info.run_id, "radiology.training_metrics.losses")) == 2
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "radiology.adapter")}
    assert {"radiology.adapter/adapter_config.json", "radiology.adapter/adapter_model.safetensors"} <= adapter


def test_kedro_logs_one_unwrapped_line_per_record_without_omegaconf_noise(tmp_path):
    """conf/logging.yml: a long log message (a file:// link) stays on one line when stdout is a file,
    and Kedro's OmegaConf deprecation warnings are not printed."""
    script = tmp_path / "log_once.py"
    link = "cost report: file:///" + "/".join(["a-long-folder-name"] * 12) + "/cost_report.html"
    script.write_text(
        "import logging, warnings\n"
        "warnings.simplefilter('default')\n"
        "from kedro.framework.session import KedroSession\n"
        "from kedro.framework.startup import bootstrap_project\n"
        "bootstrap_project('.')\n"
        "with KedroSession.create(project_path='.') as session:\n"
        "    session.load_context().params\n"
        f"    logging.getLogger('vernacular.check').info({link!r})\n")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    env.pop("KEDRO_LOGGING_CONFIG", None)
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Using 'conf/logging.yml' as logging configuration" in done.stdout
    (line,) = [line for line in done.stdout.splitlines() if "vernacular.check" in line]
    assert line.endswith(link)
    assert "register_new_resolver" not in done.stderr + done.stdout
