"""Batch transcription scaled out on Ray: a pool of actors, one model each (one GPU each when the
cluster has GPUs), each decoding and transcribing whole batches of files. The driver writes every
finished batch into the run's ledger, so a rerun skips what is done and a killed job resumes.

Ray is an optional extra (`pip install -e ".[ray]"`); the local engine needs none of it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from vernacular.common.config import build_settings

log = logging.getLogger(__name__)


@dataclass
class RaySettings:
    """`transcription.ray`: where the Ray cluster is and how many model actors to start."""

    address: str | None = None  # null: $RAY_ADDRESS when set, else a Ray started on this machine
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # null: 1 when the cluster has GPUs, else 0
    num_cpus: int | None = None  # a Ray started here: CPUs it may use (null: all)

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"transcription.ray.actors must be >= 1, got {self.actors}")

    @classmethod
    def from_dict(cls, values: dict | None) -> "RaySettings":
        return build_settings(cls, values, "transcription.ray")


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ImportError("transcription.engine: ray needs Ray: pip install -e \".[ray]\" (or set "
                          "transcription.engine: local)") from exc
    return ray


def start(settings: RaySettings):
    """Connect to (or start) Ray; returns (ray module, whether this call started it)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    address = settings.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=settings.num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True


class _Worker:
    """One actor: loads the model once, then transcribes batches with the functions it was given
    (the batch module's, passed in so that this module does not import it)."""

    def __init__(self, load: Callable, run: Callable, describe: Callable):
        self.transcriber = load()
        self._run, self._describe = run, describe

    def describe(self) -> dict:
        return self._describe(self.transcriber)

    def run(self, batch: list, run_id: str) -> list[dict]:
        return self._run(self.transcriber, batch, run_id)


def ray_batches(batches: list, load: Callable, run_id: str, settings: RaySettings, run: Callable,
                describe: Callable) -> tuple[dict, Iterator[list[dict]]]:
    """(the model's description, an iterator over finished batches' records, in completion order).

    `load` (a picklable callable returning a Transcriber) runs once in each actor; `run(transcriber,
    batch, run_id)` transcribes a batch there and `describe(transcriber)` says what the model is."""
    ray, started = start(settings)
    gpus = settings.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    count = max(1, min(settings.actors, len(batches)))
    actor_class = ray.remote(num_cpus=settings.cpus_per_actor, num_gpus=gpus)(_Worker)
    actors = [actor_class.remote(load, run, describe) for _ in range(count)]
    log.info("ray: %d actor(s) (%s CPU, %s GPU each) for %d batch(es)", count, settings.cpus_per_actor, gpus,
             len(batches))
    info = ray.get(actors[0].describe.remote())
    info["device_name"] = f"{info['device_name']} x {count} Ray actor(s)"

    def results() -> Iterator[list[dict]]:
        from ray.util import ActorPool

        pool = ActorPool(actors)
        try:
            yield from pool.map_unordered(lambda actor, batch: actor.run.remote(batch, run_id), batches)
        finally:
            for actor in actors:
                ray.kill(actor)
            if started:
                ray.shutdown()

    return info, results()
