"""``relaybox bench``: run the load generator against a throwaway local server, or
against a running one (``--target``); ``--stress`` ramps the load until it breaks."""

from __future__ import annotations

from collections.abc import Callable
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
    @click.option("--target", metavar="URL",
                  help="Measure this running server (http(s)://HOST:PORT) instead of a "
                       "throwaway local one; needs --admin-token.")
    @click.option("--admin-token", envvar="RELAYBOX_ADMIN_TOKEN", metavar="TOKEN",
                  help="The target's admin token (or RELAYBOX_ADMIN_TOKEN).")
    @click.option("--stress", is_flag=True,
                  help="Ramp events/s (and idle sessions) in steps until an objective "
                       "breaks; report the breaking point.")
    @click.option("--stress-rate", type=click.FloatRange(min=1), default=500.0,
                  show_default=True, help="Events/s of the first stress step.")
    @click.option("--stress-connections", type=click.IntRange(min=0), default=100,
                  show_default=True, help="Idle sessions of the first stress step "
                                          "(local server only).")
    @click.option("--stress-growth", type=click.FloatRange(min=1.1), default=2.0,
                  show_default=True, help="Each step multiplies rate and sessions by this.")
    @click.option("--stress-steps", type=click.IntRange(min=1, max=20), default=6,
                  show_default=True, help="At most this many steps.")
    @click.option("--step-seconds", type=click.FloatRange(min=0.2, max=600), default=5.0,
                  show_default=True, help="Publishing time of one step.")
    @click.option("--p99-ms", type=click.FloatRange(min=0.1), default=25.0,
                  show_default=True, help="Objective: p99 latency at most this.")
    @click.option("--max-rss-mib", type=click.FloatRange(min=1), default=1024.0,
                  show_default=True, help="Objective: server memory at most this "
                                          "(local server only).")
    def bench(events: int, catchup_events: int, sessions: int, handshake_rounds: int,
              only: tuple[str, ...], settle: float,
              output: Path, as_json: bool, target: str | None, admin_token: str | None,
              stress: bool, stress_rate: float, stress_connections: int,
              stress_growth: float, stress_steps: int, step_seconds: float,
              p99_ms: float, max_rss_mib: float) -> None:
        """Measure relay throughput, latency, catch-up, handshakes and memory."""
        from relaybox import bench as b

        if target and not admin_token:
            raise click.UsageError("--target needs --admin-token (or RELAYBOX_ADMIN_TOKEN)")

        def log(m: str) -> None:
            err.print(f"[dim]{markup(m)}[/]")

        try:
            if stress:
                _stress(target, admin_token, stress_rate, stress_connections, stress_growth,
                        stress_steps, step_seconds, p99_ms, max_rss_mib, output, as_json, log)
                return
            if target:
                from relaybox.bench import target as bt

                if "idle" in only:
                    log(bt.IDLE_SKIPPED)
                results = bt.run_target(
                    target, admin_token or "", events=events, catchup_events=catchup_events,
                    handshake_rounds=handshake_rounds, settle_s=settle,
                    only=set(only) or None, log=log)
            else:
                results = b.run_all(events=events, sessions=sessions,
                                    catchup_events=catchup_events,
                                    handshake_rounds=handshake_rounds, settle_s=settle,
                                    only=set(only) or None, log=log)
        except b.WorkerFailed as exc:
            raise click.ClickException(f"the run failed: {exc}") from None
        except RuntimeError as exc:  # target.Refused and the server's start
            raise click.ClickException(str(exc)) from None
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
        for name, why in results.get("skipped", {}).items():
            out.print(f"skipped {name}: {markup(why)}")
        if "cleanup" in results:
            c = results["cleanup"]
            out.print(f"cleanup: {c['devices_revoked']} bench devices revoked; users left "
                      f"(no removal route): {markup(', '.join(c['users_left']))}")
        out.print(f"details: {markup(output)}")


def _stress(target: str | None, admin_token: str | None, rate: float, connections: int,
            growth: float, steps: int, step_s: float, p99_ms: float, max_rss_mib: float,
            output: Path, as_json: bool, log: Callable[[str], None]) -> None:
    from relaybox import bench as b
    from relaybox.bench import stress as st

    ramp = st.Ramp(rate=rate, connections=connections, growth=growth, steps=steps,
                   step_s=step_s)
    obj = st.Objectives(p99_ms=p99_ms, max_rss_mib=max_rss_mib)
    res = (st.run_target(target, admin_token or "", ramp, obj, log=log) if target
           else st.run_local(ramp, obj, log=log))
    output.write_text(b.to_json(res))
    if as_json:
        emit_json(res)
        return
    table = Table("step", "events/s asked", "reached", "sessions", "p99 ms", "rss MiB",
                  "broke")
    for s in res["steps"]:
        table.add_row(str(s["step"]), f"{s['rate']:,.0f}", f"{s.get('events_per_s', 0):,.0f}",
                      str(s["connections"]), f"{s.get('latency_ms_p99', 0):,.2f}",
                      f"{s.get('server_rss_mib', '-')}",
                      markup("; ".join(s["broke"])) or "[green]-[/]")
    out.print(table)
    bp = res["breaking_point"]
    if bp is None:
        out.print("no objective broke up to the last step")
    else:
        out.print(f"breaking point: step {bp['step']} ({bp['rate']:,.0f} events/s, "
                  f"{bp['connections']} sessions); broke first: {markup(bp['broke_first'])}")
    for name, why in res.get("skipped", {}).items():
        out.print(f"skipped {name}: {markup(why)}")
    out.print(f"details: {markup(output)}")
