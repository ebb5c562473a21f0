"""transcription.engine: ray on a local Ray (2 CPUs): the same records as the local engine, written
into the same ledger, and a killed job resumes without losing or repeating a file."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from tests.serving.test_batch import fill_inbox, save_adapter, settings
from vernacular.serving.batch import RunInterrupted, load_transcriber, read_results, run_inbox

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e \".[ray]\")")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_local_records_and_resumes_after_a_kill(local_ray, tmp_path, tiny_whisper, speech_clips):
    adapter = str(save_adapter(tiny_whisper, tmp_path / "adapter", seed=1))
    names = [f"clip{i}.wav" for i in range(5)]
    files = fill_inbox(tmp_path / "inbox", speech_clips, names)
    local = settings(batch_size=2, backend="transformers")
    on_ray = settings(batch_size=2, backend="transformers", engine="ray", ray={"actors": 2})
    load = functools.partial(load_transcriber, tiny_whisper, adapter, local)  # picklable: runs in each actor

    expected = run_inbox(files, tmp_path / "local", load, local)
    assert expected["engine"] == "local" and expected["transcribed"] == 5

    with pytest.raises(RunInterrupted):  # killed after its first finished batch was written
        run_inbox(files, tmp_path / "ray", load, on_ray, interrupt_after_batches=1)
    assert len(read_results(tmp_path / "ray")) == 2
    resumed = run_inbox(files, tmp_path / "ray", load, on_ray)
    assert resumed["engine"] == "ray" and "Ray actor" in resumed["device"]
    assert resumed["new_files"] == 3 and resumed["already_done"] == 2
    by_file = {r["file"]: r for r in read_results(tmp_path / "ray")}
    assert Counter(r["file"] for r in read_results(tmp_path / "ray")) == Counter(names)  # none lost, none twice
    for record in read_results(tmp_path / "local"):
        assert by_file[record["file"]]["text"] == record["text"]
        assert by_file[record["file"]]["status"] == record["status"] == "ok"
    assert run_inbox(files, tmp_path / "ray", load, on_ray)["new_files"] == 0  # a rerun skips what is done


def test_ray_settings_are_checked():
    from vernacular.serving.batch import BatchSettings

    with pytest.raises(ValueError, match="transcription.engine"):
        BatchSettings(engine="dask")
    with pytest.raises(ValueError, match="actors"):
        BatchSettings(engine="ray", ray={"actors": 0})
