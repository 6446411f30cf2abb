"""The command-line layer: arguments (`args`), the language commands (`language`), `merge` and
`render` (imported only when run: they bring torch), and `main`, the entry point."""

from scenecraft.cli.common import EXIT_CHANGED, EXIT_INTERNAL, EXIT_OK, EXIT_USER_ERROR
from scenecraft.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "EXIT_CHANGED", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USER_ERROR", "main"]
