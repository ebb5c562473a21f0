"""A vertical's parameter block as one typed record, and the verticals this project registers.

`VerticalSettings.from_dict(params["radiology"], "radiology")` builds every section's settings
(nested ones included) and rejects any unknown or mistyped key with its full name; the project
hook runs it for every vertical of a run before the first node (`vernacular.hooks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vernacular.common.config import build_settings
from vernacular.common.storage import StorageSettings
from vernacular.data.augment import AugmentSettings
from vernacular.data.features import FeatureSettings
from vernacular.data.ingestion import SourceSettings, SplitSettings
from vernacular.data.manifest import AudioLimits
from vernacular.evaluation.run import EvaluationSettings
from vernacular.models.loading import ModelSettings
from vernacular.reporting.adapter_card import CardSettings
from vernacular.reporting.cost import CostSettings
from vernacular.serving.batch import BatchSettings
from vernacular.training.settings import LoraSettings, TrainSettings

# A vertical is a parameters block in conf/ (named like the vertical) plus a name here.
VERTICALS = ("radiology", "finance", "accent")
SHARED_BLOCKS = ("prices",)  # parameter blocks every vertical reads


@dataclass
class VerticalSettings:
    vertical: str
    source: SourceSettings = field(default_factory=SourceSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    audio_limits: AudioLimits = field(default_factory=AudioLimits)
    model: ModelSettings = field(default_factory=ModelSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    adapter: LoraSettings = field(default_factory=LoraSettings)
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    card: CardSettings = field(default_factory=CardSettings)
    transcription: BatchSettings = field(default_factory=BatchSettings)

    @classmethod
    def from_dict(cls, values: dict | None, vertical: str) -> "VerticalSettings":
        """Every section of `values` checked; errors name the key as `<vertical>.<section>.<key>`."""
        try:
            return build_settings(cls, values, vertical)
        except ValueError as exc:
            message = str(exc)
            if not message.startswith((f"{vertical}.", "unknown setting")):
                message = f"{vertical}.{message}"
            raise type(exc)(f"{message} (conf/base/parameters.yml, block `{vertical}`)") from exc


def check_parameters(parameters: dict, verticals) -> dict[str, VerticalSettings]:
    """Validate the blocks of `verticals` in the run's parameters; ValueError naming the first bad key."""
    missing = [v for v in verticals if v not in parameters]
    if missing:
        raise ValueError(f"no parameter block for vertical(s) {missing}: add `{missing[0]}:` to "
                         "conf/base/parameters.yml")
    return {v: VerticalSettings.from_dict(parameters[v], v) for v in verticals}
