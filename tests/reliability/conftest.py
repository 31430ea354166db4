"""The reliability suite: property-based and fault-injection tests. Each test adds how many cases it
tried to a tally, and the run ends with one summary line of what was tried."""

from __future__ import annotations

from collections import Counter

import pytest

_TALLY: Counter[str] = Counter()


@pytest.fixture(scope="session")
def tally() -> Counter[str]:
    """Cases tried per kind, summed over the session."""
    return _TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001
    if not _TALLY:
        return
    failed = [r for r in terminalreporter.stats.get("failed", []) if "reliability" in r.nodeid]
    tried = ", ".join(f"{kind} {n:,}" for kind, n in sorted(_TALLY.items()))
    verdict = f"{len(failed)} reliability test(s) FAILED" if failed else "none crashed, hung or lost data"
    terminalreporter.write_line(f"reliability suite: tried {tried}: {verdict}")
