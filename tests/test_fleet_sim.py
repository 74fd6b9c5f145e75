"""tools/fleet_sim.py, small: a few simulated stores through the shipped head office
broker (its own, --local) into `edge hq` and PostgreSQL; every store's totals arrive
exactly (the tool compares them and says so), through one `edge hq` and through two of
one share group."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.xdist_group("postgres")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_small_fleet_arrives_with_equal_totals(pg_url, tmp_path, processes):
    figures = tmp_path / "figures.json"
    command = [
        sys.executable, str(ROOT / "tools" / "fleet_sim.py"), "--local", "--db", pg_url,
        "--hq", str(processes), "--stores", "3", "--cameras", "2", "--displays", "1",
        "--minutes", "15", "--timeout", "60", "--json", str(figures),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    got = json.loads(figures.read_text())
    totals = got["totals"]
    assert totals["intervals"] == 3 * 2 * 15  # a camera's interval a minute
    assert totals["plays"] > 0 and totals["visitors"] > 0 and totals["impressions"] > 0
    assert got["messages"] == totals["intervals"] + totals["plays"]
    assert got["complete"] and got["totals_equal"] and got["hq_processes"] == processes
    assert f"published: {got['messages']}/{got['messages']} acknowledged" in result.stdout
    assert "totals per store: all 3 equal" in result.stdout
