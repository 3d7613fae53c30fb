"""The `mailops` command line."""

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """End the command: the message in red on stderr, exit status 1."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)
