"""`edge report --db`: head office's PostgreSQL (a real cluster, tests/postgres.py)
holding the rows of three stores gives, for each store, the very report its box gives
from its own SQLite store, per hour and per day across Berlin's autumn change and
Kathmandu's +05:45 midnight; the fleet's totals are the stores' sums."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_edge
from fleet_records import STORES, fleet

pytestmark = pytest.mark.xdist_group("postgres")


@pytest.fixture(scope="module")
def boxes(postgres, tmp_path_factory):
    """(database URL, {store: box config}): every store's box and head office."""
    folder = tmp_path_factory.mktemp("fleet")
    url = postgres.create_database()
    configs = {}
    for store_id, path in fleet(folder, url).items():
        config = folder / f"{store_id}.yaml"
        config.write_text(f"state_dir: {path.parent}\nmqtt: {{store_id: {store_id}}}\n")
        configs[store_id] = config
    return url, configs


def edge_report(*args, tz: str = "UTC", config=None) -> str:
    env = {**os.environ, "TZ": tz}
    env.pop("PGPASSWORD", None)
    lead = ["--config", str(config)] if config else []
    result = run_edge(*lead, "report", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("by", ["hour", "day", "campaign"])
def test_each_store_reads_the_same_on_its_box_and_at_head_office(boxes, by):
    url, configs = boxes
    for store_id, (_, box_tz) in STORES.items():
        box = json.loads(
            edge_report("--by", by, "--format", "json", tz=box_tz, config=configs[store_id])
        )
        # Head office runs in UTC: each store's periods are its own zone's.
        hq = json.loads(
            edge_report("--db", url, "--store", store_id, "--by", by, "--format", "json")
        )
        assert box["periods"] and box["ads"]
        assert hq == box, store_id
    # The clocks the records were chosen for:
    berlin = json.loads(
        edge_report("--db", url, "--store", "berlin-7", "--by", "hour", "--format", "json")
    )
    assert [(p["period"], p["utc_offset"], p["visitors"]) for p in berlin["periods"]] == [
        ("2026-10-24 23:00", "+02:00", 3),
        ("2026-10-25 02:00", "+02:00", 2),
        ("2026-10-25 02:00", "+01:00", 5),
    ]
    kathmandu = json.loads(edge_report("--db", url, "--store", "kathmandu-1", "--format", "json"))
    assert [(p["period"], p["utc_offset"], p["visitors"]) for p in kathmandu["periods"]] == [
        ("2026-10-24", "+05:45", 2),
        ("2026-10-25", "+05:45", 5),
    ]


def test_ranges_are_each_stores_local_days(boxes):
    url, configs = boxes
    for store_id, (_, box_tz) in STORES.items():
        args = ("--from", "2026-10-25", "--to", "2026-10-25", "--by", "hour", "--format", "json")
        box = json.loads(edge_report(*args, tz=box_tz, config=configs[store_id]))
        hq = json.loads(edge_report("--db", url, "--store", store_id, *args))
        assert hq == box, store_id
    both = json.loads(
        edge_report(
            "--db", url, "--store", "berlin-7,kathmandu-1", "--from", "2026-10-25",
            "--to", "2026-10-25", "--format", "json",
        )
    )  # fmt: skip
    # Berlin's 23:50 of the 24th and Kathmandu's 23:59 of the 24th are out.
    assert {s["store"]: s["visitors"] for s in both["stores"]} == {
        "berlin-7": 7,
        "kathmandu-1": 5,
    }


def test_the_fleet_report_sums_the_stores_and_names_them(boxes):
    url, _ = boxes
    everything = json.loads(edge_report("--db", url, "--format", "json"))
    one_by_one = [
        json.loads(edge_report("--db", url, "--store", s, "--format", "json"))["totals"]
        for s in STORES
    ]
    totals = everything["totals"]
    assert totals["store"] == everything["store"] == ",".join(sorted(STORES))
    for name in ("visitors", "watchers", "plays", "impressions", "reach"):
        assert totals[name] == sum(t[name] for t in one_by_one), name
    assert [s["store"] for s in everything["stores"]] == sorted(STORES)
    assert {p["store"] for p in everything["periods"]} == set(STORES)
    by_store = edge_report("--db", url, "--by", "store")
    assert by_store.startswith("Stores ") and "berlin-7" in by_store and "nyc-3" in by_store
    stores_csv = edge_report("--db", url, "--by", "store", "--format", "csv").split("\n\n")[0]
    assert stores_csv.splitlines()[0].startswith("store,segment,visitors,")
    assert (
        sum(int(line.split(",")[2]) for line in stores_csv.splitlines()[1:] if ",all," in line)
        == totals["visitors"]
    )
    table = edge_report("--db", url, "--by", "hour")
    assert "store" in table.splitlines()[1] and "kathmandu-1" in table


def test_an_unknown_store_is_one_line_naming_the_known_ones(boxes):
    url, configs = boxes
    result = run_edge("report", "--db", url, "--store", "berlin-7,paris-2")
    assert result.returncode == 64 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "no store 'paris-2'" in result.stderr
    assert "known: berlin-7, kathmandu-1, nyc-3" in result.stderr
    result = run_edge("report", "--db", url, "--store", "nyc-3", "--ad", "spring-dress")
    assert result.returncode == 64 and "known: grooming" in result.stderr
    # A box knows its own store only.
    result = run_edge("--config", str(configs["nyc-3"]), "report", "--store", "berlin-7")
    assert result.returncode == 64 and "known: nyc-3" in result.stderr


def test_the_password_never_goes_on_the_command_line(boxes, postgres):
    url, _ = boxes
    with_password = url.replace("postgres@", "postgres:secret@")
    result = run_edge("report", "--db", with_password)
    assert result.returncode == 64 and "secret" not in result.stderr
    assert "EDGE_HQ_DB_PASSWORD" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # From the environment it is used (the test cluster trusts loopback, so any works),
    # and a database that does not answer is one line naming it, password hidden.
    down = f"postgresql://postgres@127.0.0.1:{postgres.port + 1}/nothing"
    result = run_edge("report", "--db", down, env={**os.environ, "EDGE_HQ_DB_PASSWORD": "secret"})
    assert result.returncode != 0 and "secret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot read head office's database" in result.stderr
    result = run_edge(
        "report", "--db", url, "--format", "json", env={**os.environ, "EDGE_HQ_DB_PASSWORD": "x"}
    )
    assert result.returncode == 0 and json.loads(result.stdout)["totals"]["visitors"] > 0


def test_a_database_edge_hq_never_set_up_is_one_line(postgres):
    result = run_edge("report", "--db", postgres.create_database())
    assert result.returncode == 78 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "`edge hq` creates its tables at start" in result.stderr
