"""The ``tasklane`` command: one Typer app (:mod:`tasklane.cli.main`) with its subcommands."""
