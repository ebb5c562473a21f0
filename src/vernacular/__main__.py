"""Vernacular file for ensuring the package is executable
as `vernacular` and `python -m vernacular`

`vernacular transcribe ...` is the Kedro-free transcription CLI (vernacular.transcribe_cli; not `cli.py`, which Kedro would load as the project CLI) and
`vernacular export ...` merges an adapter and exports it (vernacular.export); anything else
goes to Kedro's run command as before.
"""
import sys
from pathlib import Path
from typing import Any


def main(*args, **kwargs) -> Any:
    if not args and len(sys.argv) > 1 and sys.argv[1] == "transcribe":
        from vernacular.transcribe_cli import main as transcribe_main

        sys.exit(transcribe_main(sys.argv[2:]))
    if not args and len(sys.argv) > 1 and sys.argv[1] == "export":
        from vernacular.export import main as export_main

        sys.exit(export_main(sys.argv[2:]))

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
