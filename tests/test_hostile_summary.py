"""The per-source summary that replaces a log line per hostile request (issue 16)."""

from __future__ import annotations

from b2bua.hostile_summary import HostileSummary


def test_a_flood_is_one_immediate_line_then_one_summary_line_per_source() -> None:
    lines: list[str] = []
    s = HostileSummary(lines.append, interval=60)
    for i in range(10_000):
        s.count("203.0.113.66", "refused", 100 + i * 0.001, line="security event=refused ip=203.0.113.66")
    assert len(lines) == 1 and "203.0.113.66" in lines[0]
    s.count("203.0.113.66", "malformed", 150, line="sip event=malformed source=203.0.113.66:5060")
    assert len(lines) == 2  # the first of another kind is written too
    s.flush(161)
    assert lines[-1] == "security: summary ip=203.0.113.66 seconds=61 malformed=1 refused=10000"
    assert s.flush(300) == []  # nothing new: nothing written


def test_spoofed_sources_cannot_turn_it_back_into_a_line_per_request() -> None:
    lines: list[str] = []
    s = HostileSummary(lines.append, interval=60, max_sources=100, max_lines=5, max_first_lines=10)
    for i in range(5000):
        s.count(f"10.0.{i // 256}.{i % 256}", "stranger", 100.0, line=f"first from 10.0.{i // 256}.{i % 256}")
    assert len(lines) == 10
    summary = s.flush(160)
    assert len(summary) == 6  # the 5 busiest and one merged line
    assert summary[-1].startswith("security: summary ip=others(")
    assert sum(int(line.rsplit("=", 1)[1]) for line in summary) == 5000
