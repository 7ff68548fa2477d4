"""benchmarks/db_restart.py's report: what counts as lost, as in flight during the restart, and as recovered."""

from __future__ import annotations

import argparse

from benchmarks.db_restart import Request, Run, parser, report

CRASH, BACK = 10.0, 12.0


def _run(*requests: Request, acknowledged: dict[str, list[str]] | None = None) -> Run:
    run = Run(requests=list(requests), acknowledged=acknowledged or {"t": ["a", "b"]})
    run.began, run.crashed_at, run.back_at = 0.0, CRASH, BACK
    return run


def _args() -> argparse.Namespace:
    return parser().parse_args(["--duration", "20", "--restart-at", "10"])


def test_a_clean_restart_passes_and_its_figures_are_counted() -> None:
    run = _run(Request("write", 1.0, 1.1, True, 201), Request("write", 9.9, 12.5, True, 201),  # waited it out
               Request("read", 11.0, 12.2, False, 500),  # failed while the database was down: in flight
               Request("read", 12.1, 12.9, True, 200), Request("health", 12.0, 12.4, True, 200))
    out = report(run, {"u": {"a", "b", "c"}}, _args())
    assert out["lost_writes"] == 0 and out["acknowledged_writes"] == 2
    assert out["committed_not_acknowledged"] == 1  # "c": committed, its answer lost
    assert out["in_flight_at_stop"] == 1 and out["in_flight_during_restart"] == 2
    assert out["errors"] == 1 and out["errors_in_flight_during_restart"] == 1 and out["errors_outside_restart"] == 0
    assert out["recovered_after_s"] == 0.9  # the first success begun after BACK ended at 12.9
    assert out["healthz_ok_after_s"] == 0.4
    assert out["passed"] is True


def test_a_lost_write_an_error_outside_the_restart_or_a_slow_recovery_fails() -> None:
    ok_after = Request("read", 12.1, 12.9, True, 200)
    lost = report(_run(ok_after), {"u": {"a"}}, _args())
    assert lost["lost_writes"] == 1 and lost["passed"] is False
    outside = report(_run(ok_after, Request("write", 15.0, 15.1, False, 500)), {"u": {"a", "b"}}, _args())
    assert outside["errors_outside_restart"] == 1 and outside["passed"] is False
    slow = report(_run(Request("read", 12.1, 17.5, True, 200)), {"u": {"a", "b"}}, _args())
    assert slow["recovered_after_s"] == 5.5 and slow["passed"] is False
    never = report(_run(), {"u": {"a", "b"}}, _args())
    assert never["recovered_after_s"] is None and never["passed"] is False
