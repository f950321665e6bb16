"""Tables that fit an 80-column terminal, and the ``--wide`` and ``--json`` options of lists.

A list shows the columns an operator needs at 80 columns; ``--wide`` shows every column and
``--json`` prints one JSON document for scripts. Formats: docs/operations.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: ``--wide``: every column, for a wide terminal.
Wide = Annotated[bool, typer.Option("--wide", help="Show every column (needs a wide terminal).")]
#: ``--json``: one JSON document on stdout, for scripts.
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts).")]


def compact_table(title: str | None = None) -> Table:
    """A table with no vertical rules, so its columns get the width borders would take."""
    return Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left"
    )


def _utc(value: datetime | str | None) -> datetime | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if value is None:
        return None
    # A naive time is Tasklane's own UTC (dead-letter headers are written in UTC).
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def compact_time(value: datetime | str | None, now: datetime | None = None) -> str:
    """``12-04 14:03:11`` in UTC this year, ``2025-12-04 14:03`` in another; ``-`` when unset.

    Text that is not ISO 8601 is returned as it is, so nothing is hidden.
    """
    moment = _utc(value)
    if moment is None:
        return value if isinstance(value, str) and value else "-"
    year = (now or datetime.now(UTC)).year
    return moment.strftime("%m-%d %H:%M:%S" if moment.year == year else "%Y-%m-%d %H:%M")


def print_json(data: Any) -> None:
    """``data`` as one indented JSON document on stdout, never wrapped or coloured.

    Non-ASCII text is written as it is, unless it holds lone surrogates (a header or body that
    was not valid UTF-8), which no UTF-8 stream can take: then the whole document is ASCII.
    """
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, indent=2, default=str, ensure_ascii=True)
    typer.echo(text)


def print_wide(console: Console, table: Table) -> None:
    """``table`` when the terminal is wide enough for it unwrapped, else one record per row
    (``Column  value`` lines), so ``--wide`` never squeezes a column to nothing."""
    # Measured as if the terminal had no edge: the width the table needs unwrapped.
    unbounded = console.options.update_width(1_000_000)
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(Text(str(table.title), style="bold"))
    headers = [str(column.header) for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    for number in range(table.row_count):
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold", no_wrap=True)
        record.add_column(overflow="fold")
        for header, column in zip(headers, cells, strict=True):
            record.add_row(header, column[number])
        console.print(record)
        console.print()
