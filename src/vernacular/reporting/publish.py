"""Publishing an adapter to the Hugging Face Hub: the folder that is uploaded, and the upload.

`stage_adapter` writes exactly what `push_adapter` uploads: the adapter folder as training and the
reporting stage left it (PEFT weights and config, SPEECH_TASK_FILE, the adapter card as README.md).
It refuses a folder without the project's card, because a published adapter without its
provenance and test results is what the card exists to prevent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vernacular.common.fileio import write_new_directory
from vernacular.models.loading import ADAPTER_CARD, ADAPTER_CONFIG, adapter_card, check_adapter_dir


class PublishError(ValueError):
    """The adapter folder is not ready to publish; the message says what to run."""


def publish_warnings(adapter_dir: str | os.PathLike) -> list[str]:
    """What a user of the published folder would trip over (not errors: a private base is allowed)."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    base = str(config.get("base_model_name_or_path") or "")
    if base and (Path(base).is_absolute() or base.startswith((".", "~"))):
        return [f"{ADAPTER_CONFIG} names the base model by a local path ({base}): users of the published adapter "
                "must load that base themselves and pass it to PeftModel.from_pretrained"]
    return []


def stage_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write the folder to upload into the new folder `out_dir`; return its file names."""
    folder = check_adapter_dir(adapter_dir)
    if adapter_card(folder) is None:
        raise PublishError(f"{folder}: no adapter card ({ADAPTER_CARD} is missing or PEFT's empty template); run the "
                           "vertical's reporting stage first, e.g. `kedro run --pipeline=radiology.reporting`")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())

    def write(tmp: Path) -> None:
        for name in files:
            shutil.copyfile(folder / name, tmp / name)

    write_new_directory(out_dir, write)
    return files


def push_adapter(staged_dir: str | os.PathLike, repo_id: str, private: bool = True,
                 commit_message: str = "Upload adapter") -> str:
    """Create `repo_id` (private unless `private` is False) if needed and upload `staged_dir`; the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=repo_id, folder_path=str(staged_dir), commit_message=commit_message,
                             repo_type="model")
    return str(getattr(info, "commit_url", info))
