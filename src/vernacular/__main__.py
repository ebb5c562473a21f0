"""Vernacular file for ensuring the package is executable
as `vernacular` and `python -m vernacular`

`vernacular transcribe ...` is the Kedro-free transcription CLI (vernacular.serving.cli; not `cli.py`, which Kedro would load as the project CLI) and
`vernacular export ...` merges an adapter and exports it (vernacular.models.export), `vernacular push ...`
publishes it to the Hugging Face Hub (vernacular.reporting.publish); anything else
goes to Kedro's run command as before.
"""
import sys
from pathlib import Path
from typing import Any

from vernacular.serving.cli import export_main, push_main
from vernacular.serving.cli import main as transcribe_main


SUBCOMMANDS = """Subcommands (each has --help):
  vernacular transcribe FILES...   transcribe audio with a vertical's adapter (JSON lines on stdout)
  vernacular export --out DIR      merge an adapter into its base model (transformers, CTranslate2)
  vernacular push --repo-id ID     publish an adapter with its card to the Hugging Face Hub
  vernacular [OPTIONS]             anything else runs the Kedro pipelines (`kedro run` options below)
"""


def main(*args, **kwargs) -> Any:
    if not args and sys.argv[1:] in (["-h"], ["--help"]):
        print(SUBCOMMANDS)
    if not args and len(sys.argv) > 1 and sys.argv[1] == "transcribe":
        sys.exit(transcribe_main(sys.argv[2:]))
    if not args and len(sys.argv) > 1 and sys.argv[1] == "export":
        sys.exit(export_main(sys.argv[2:]))
    if not args and len(sys.argv) > 1 and sys.argv[1] == "push":
        sys.exit(push_main(sys.argv[2:]))

    # Imported here, not at the top: importing kedro.framework.project sets up Kedro's logging on
    # stdout, which would mix log lines into the JSON that `vernacular transcribe` prints.
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, 'ps1')
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
