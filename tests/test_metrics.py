"""Prometheus metrics, in one process and across uvicorn workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service, alive


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_requests_are_counted_by_route_template_method_and_status(
    client: httpx.AsyncClient,
) -> None:
    labels = {"method": "GET", "route": "/users/{user}", "status": "404"}
    before = await scrape(client)
    for n in range(3):
        await client.get(f"/users/nobody{n}@x.io")
    after = await scrape(client)
    assert (
        value(after, "http_requests_total", **labels)
        - value(before, "http_requests_total", **labels)
        == 3
    )
    assert (
        value(after, "http_request_duration_seconds_count", **labels)
        - value(before, "http_request_duration_seconds_count", **labels)
        == 3
    )
    assert "nobody" not in after


async def test_requests_answered_together_fill_count_sum_and_buckets_alike(
    client: httpx.AsyncClient,
) -> None:
    labels = {"method": "GET", "route": "/users/{user}", "status": "404"}
    name = "http_request_duration_seconds"
    before = samples(await scrape(client))
    await asyncio.gather(*(client.get(f"/users/nobody{n}@x.io") for n in range(50)))
    after = samples(await scrape(client))

    def grown(sample: str, **extra: str) -> float:
        key = (sample, frozenset({**labels, **extra}.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grown("http_requests_total") == grown(f"{name}_count") == 50
    assert grown(f"{name}_bucket", le="+Inf") == 50
    assert grown(f"{name}_sum") > 0
    bounds = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0"]
    cumulative = [grown(f"{name}_bucket", le=bound) for bound in [*bounds, "+Inf"]]
    assert cumulative == sorted(cumulative)


async def test_unknown_paths_share_one_label(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await client.get(f"/no/such/path/{n}")
    after = await scrape(client)
    assert value(after, "http_requests_total", method="GET", route="unmatched", status="404") >= 3
    assert "/no/such/path" not in after


async def test_in_flight_and_pool_gauges_are_exported(client: httpx.AsyncClient) -> None:
    text = await scrape(client)
    assert value(text, "http_requests_in_flight") >= 1  # the scrape itself
    assert value(text, "db_pool_connections") >= 1
    assert "db_pool_idle_connections" in text


async def test_database_errors_are_counted_by_class(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    before = value(await scrape(client), "db_errors_total", error="UndefinedTableError")
    await db.execute("ALTER TABLE users RENAME TO users_away")
    try:
        await client.get("/users")
    finally:
        await db.execute("ALTER TABLE users_away RENAME TO users")
    after = value(await scrape(client), "db_errors_total", error="UndefinedTableError")
    assert after - before == 1


async def test_a_caller_error_that_a_constraint_answers_is_not_a_database_error(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    before = samples(await scrape(client))
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await client.post("/users", json={"name": "Bo", "email": "bo@x.io"})
    taken = await client.patch("/users/bo@x.io", json={"email": "ANN@x.io"})
    assert taken.status_code == 409
    dated = await client.get("/users", params={"created_after": "9999-12-31T23:59:59-23:59"})
    assert dated.status_code == 422
    # A rule of the database's that the service does not check itself.
    await db.execute("ALTER TABLE users ADD CONSTRAINT no_zed CHECK (name <> 'Zed') NOT VALID")
    try:
        refused = await client.post("/users", json={"name": "Zed", "email": "zed@x.io"})
    finally:
        await db.execute("ALTER TABLE users DROP CONSTRAINT no_zed")
    assert refused.status_code == 422
    after = samples(await scrape(client))
    grown = {key: after[key] - before.get(key, 0.0) for key in after if key[0] == "db_errors_total"}
    assert not any(grown.values()), grown


def scrape_http(service: Service) -> str:
    return httpx.get(f"{service.url}/metrics", timeout=5).text


def test_metrics_add_up_across_workers_and_forget_dead_ones(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    metrics_dir = tmp_path / "metrics"
    env = {
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "DB_POOL_MIN": "1",
    }
    service = Service(tmp_path, env)
    services.append(service)
    service.wait_ready()
    labels = {"method": "GET", "route": "/users/{user}", "status": "404"}
    for n in range(40):  # a connection each, so both workers answer some
        assert httpx.get(f"{service.url}/users/nobody{n}@x.io").status_code == 404
    # Whichever worker answers the scrape, it reports both workers' counts.
    for _ in range(6):
        text = scrape_http(service)
        assert value(text, "http_requests_total", **labels) == 40
    workers = [
        int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", service.output())
    ]
    assert len(workers) == 2
    # Both workers answered some of the requests: each wrote its own counts.
    assert {int(path.stem.rpartition("_")[2]) for path in metrics_dir.glob("counter_*.db")} == set(
        workers
    )
    deadline = time.monotonic() + 10
    while value(scrape_http(service), "db_pool_connections") != 2:
        assert time.monotonic() < deadline, scrape_http(service)
        time.sleep(0.2)

    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(re.findall(r"Started server process", service.output())) < 3:
        assert time.monotonic() < deadline, service.output()
        time.sleep(0.2)
    service.wait_ready()
    # The dead worker's live gauges are gone; its counts stay.
    deadline = time.monotonic() + 10
    while value(text := scrape_http(service), "db_pool_connections") != 2:
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert value(text, "http_requests_total", **labels) == 40
    assert not alive(workers[0])

    assert service.stop(signal.SIGTERM) == 0

    # A new run starts from clean files in the same directory.
    again = Service(tmp_path, env)
    services.append(again)
    again.wait_ready()
    assert value(scrape_http(again), "http_requests_total", **labels) == 0
