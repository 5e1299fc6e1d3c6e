"""Print the fuzz test's outcome counts after the run: compiles and errors, by error class and fault."""

from __future__ import annotations

import pytest
from generators import OUTCOMES

__all__: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Under pytest-xdist the examples run in the workers, so the controller has nothing to print.
    if not OUTCOMES:
        return
    terminalreporter.section("akfc compile fuzz")
    compiled = sum(count for outcome, count in OUTCOMES.items() if outcome.startswith("compiled"))
    # A failing example runs once more when hypothesis reports it, so it counts twice.
    terminalreporter.write_line(f"{sum(OUTCOMES.values())} runs, {compiled} compiled")
    for outcome, count in sorted(OUTCOMES.items()):
        terminalreporter.write_line(f"{count:5d}  {outcome}")
