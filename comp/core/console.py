"""One rich console for the whole tool, so --quiet silences everything in one place."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)  # no hard wraps in logs and CI output
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet
    console.quiet = quiet


def is_quiet() -> bool:
    return _state["quiet"]


def info(message: str) -> None:
    console.print(message)


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they are about the user's data."""
    was_quiet = console.quiet
    console.quiet = False
    console.print(f"[yellow]warning:[/yellow] {message}")
    console.quiet = was_quiet
