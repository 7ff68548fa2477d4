"""benchmarks/serve.py's analysis on planted records: percentiles, throughput, mixed-up answers, the fault phase."""

from __future__ import annotations

import pytest

from benchmarks.serve import Record, fault_summary, mixed_up, percentile, ratio, summarize

REFS = {0: "alpha", 1: "beta", 2: "gamma"}


def rec(client: int, text: str, *, ok: bool = True, tokens: int = 10, ttft: float | None = 0.5, end: float = 1.0,
        replica: str | None = "r1", error: str | None = None) -> Record:
    return Record(client=client, start=0.0, end=end, ok=ok, text=text, tokens=tokens, ttft=ttft, replica=replica,
                  error=error)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]  # sorted: 1 2 3 4 5
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.95) == pytest.approx(4.8)  # 4 + 0.8 * (5 - 4)
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 5.0
    assert percentile([7.0], 0.95) == 7.0 and percentile([], 0.5) is None


def test_an_answer_delivered_to_the_wrong_client_is_mixed_up() -> None:
    records = [rec(0, "alpha"), rec(1, "gamma"), rec(2, "gamma"), rec(2, "gamm"),
               rec(1, "", ok=False, error="HTTP 503")]  # a failed request is an error, not a mix-up
    bad = mixed_up(records, REFS)
    assert [(r.client, r.text) for r in bad] == [(1, "gamma"), (2, "gamm")]
    assert mixed_up([rec(5, "alpha")], REFS)  # a client without a reference cannot pass


def test_a_phase_summary() -> None:
    records = [rec(0, "alpha", tokens=10, ttft=0.1), rec(1, "beta", tokens=20, ttft=0.2, replica="r2"),
               rec(2, "gamma", tokens=30, ttft=0.3), rec(0, "", ok=False, tokens=99, ttft=9.0, error="boom")]
    s = summarize(records, wall=4.0, references=REFS)
    assert (s["answers"], s["errors"], s["mixed_up"], s["tokens"]) == (3, 1, 0, 60)  # the failed one's 99 uncounted
    assert s["tokens_per_s"] == 15.0
    assert s["ttft_p50_s"] == 0.2 and s["ttft_p95_s"] == pytest.approx(0.29)
    assert s["answers_by_replica"] == {"r1": 2, "r2": 1} and s["first_errors"] == ["boom"]
    assert ratio(30.0, 16.0) == 1.875 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_the_fault_phase() -> None:
    before = {"r1", "r2"}
    records = [
        rec(0, "alpha", end=1.0, replica="r1"),
        rec(1, "", ok=False, end=5.2, replica="r2", error="error event: The replica r2 answering ... stopped"),
        rec(2, "", ok=False, end=5.3, replica=None, error="HTTP 503: The replica r2 answering ... stopped"),
        rec(0, "alpha", end=6.0, replica="r1"),
        rec(1, "beta", end=9.5, replica="r3"),  # the new replica: 9.5 - 5.0 after the kill
        rec(2, "gamma", end=12.0, replica="r3"),
    ]
    f = fault_summary(records, killed_at=5.0, victim="r2", before=before)
    assert (f["affected"], f["affected_elsewhere"], f["answered"], f["answered_after_kill"]) == (2, 0, 4, 3)
    assert f["recovery_s"] == 4.5
    # An error on the surviving replica is counted as collateral damage; no new replica: no recovery.
    records.append(rec(0, "", ok=False, end=7.0, replica="r1", error="HTTP 500: bug"))
    f = fault_summary([r for r in records if r.replica != "r3"], killed_at=5.0, victim="r2", before=before)
    assert f["affected_elsewhere"] == 1 and f["recovery_s"] is None
