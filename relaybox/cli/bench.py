"""``relaybox bench``: run the load generator against a throwaway local server."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from relaybox.cli.common import emit_json, err, out
from relaybox.cli.safe import markup


def register(cli: click.Group) -> None:
    @cli.command("bench")
    @click.option("--events", type=click.IntRange(min=100), default=50000, show_default=True,
                  help="Events in the throughput run.")
    @click.option("--catchup-events", type=click.IntRange(min=100), default=20000,
                  show_default=True, help="Events replayed in the catch-up run.")
    @click.option("--sessions", type=click.IntRange(min=10), default=5000, show_default=True,
                  help="Idle sessions for the memory run.")
    @click.option("--handshakes", "handshake_rounds", type=click.IntRange(min=10),
                  default=3000, show_default=True, help="Handshakes in the handshake run.")
    @click.option("--only", multiple=True,
                  type=click.Choice(["throughput", "latency", "catchup", "handshakes", "idle"]),
                  help="Run only these parts (repeatable).")
    @click.option("--settle", type=click.FloatRange(min=0), default=5.0, show_default=True,
                  help="Seconds between parts, so that one part's writes are checkpointed "
                       "before the next starts.")
    @click.option("--output", type=click.Path(path_type=Path),
                  default=Path("bench-results.json"), show_default=True,
                  help="Where to write the JSON results.")
    @click.option("--json", "as_json", is_flag=True, help="Print the JSON results on stdout.")
    def bench(events: int, catchup_events: int, sessions: int, handshake_rounds: int,
              only: tuple[str, ...], settle: float,
              output: Path, as_json: bool) -> None:
        """Measure relay throughput, latency, catch-up, handshakes and memory (loopback)."""
        from relaybox import bench as b

        results = b.run_all(events=events, sessions=sessions, catchup_events=catchup_events,
                            handshake_rounds=handshake_rounds, settle_s=settle,
                            only=set(only) or None, log=lambda m: err.print(f"[dim]{markup(m)}[/]"))
        output.write_text(b.to_json(results))
        if as_json:
            emit_json(results)
            return
        table = Table("measure", "value", "target", "met")
        for name, row in results["summary"].items():
            mark = "[green]yes[/]" if row["met"] else "[red]no[/]"
            table.add_row(name, f"{row['value']:,}", row["target"], mark)
        out.print(table)
        note = b.stall_note(results.get("latency_at_2000"))
        if note:
            out.print(note)
        out.print(f"details: {markup(output)}")
