"""Prometheus metrics, in one process and across uvicorn workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import time
from pathlib import Path

import asyncpg
import httpx
from msgspec.structs import replace
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import MAX_UNCONFIGURED_CLIENTS, OTHER_CLIENTS, ClientLabels
from service.scopes import ScopeName
from service.settings import Client, Settings
from tests.conftest import Service, alive, client_of

TOKEN = "a-token-of-16-characters-or-more"  # noqa: S105 - a test's own token


def client(name: str, scopes: set[ScopeName]) -> Client:
    """A client whose token is token_of(name)."""
    digest = hashlib.sha256(token_of(name).encode()).hexdigest()
    return Client(name=name, scopes=frozenset(scopes), token_sha256=digest)


def token_of(name: str) -> str:
    return f"{name}-token-0123456789"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
        value(after, "http_requests_total", **labels, client="")
        - value(before, "http_requests_total", **labels, client="")
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

    assert grown("http_requests_total", client="") == grown(f"{name}_count") == 50
    assert grown(f"{name}_bucket", le="+Inf") == 50
    assert grown(f"{name}_sum") > 0
    bounds = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0"]
    cumulative = [grown(f"{name}_bucket", le=bound) for bound in [*bounds, "+Inf"]]
    assert cumulative == sorted(cumulative)


async def test_unknown_paths_share_one_label(client: httpx.AsyncClient) -> None:
    for n in range(3):
        await client.get(f"/no/such/path/{n}")
    after = await scrape(client)
    unmatched = {"method": "GET", "route": "unmatched", "status": "404", "client": ""}
    assert value(after, "http_requests_total", **unmatched) >= 3
    assert "/no/such/path" not in after


async def test_requests_are_counted_by_client_and_without_a_caller_by_an_empty_label(
    settings: Settings, db: asyncpg.Pool
) -> None:
    clients = (client("reporting", {"users:read"}), client("audit", {"users:changes"}))
    configured = replace(settings, api_clients=clients, api_tokens=(TOKEN,))
    async with client_of(configured) as service:
        before = await scrape(service)
        for _ in range(3):
            await service.get("/users/nobody@x.io", headers=bearer(token_of("reporting")))
        await service.get("/users/nobody@x.io", headers=bearer(TOKEN))
        await service.get("/users/nobody@x.io", headers=bearer(token_of("audit")))  # 403
        await service.get("/users/nobody@x.io")  # 401: no caller is known
        await service.get("/users/nobody@x.io", headers=bearer("not-a-token-of-ours"))  # 401
        await service.get("/livez", headers=bearer(TOKEN))  # open: no caller is asked for
        after = await scrape(service)

    def grown(status: str, client: str, route: str = "/users/{user}") -> float:
        labels = {"method": "GET", "route": route, "status": status, "client": client}
        return value(after, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert grown("404", "reporting") == 3
    assert grown("404", "token-1") == 1
    assert grown("403", "audit") == 1
    assert grown("401", "") == 2
    assert grown("200", "", route="/livez") == 1
    assert "not-a-token" not in after
    # Latency stays by method, route and status alone.
    latency = {"method": "GET", "route": "/users/{user}", "status": "404"}
    assert (
        value(after, "http_request_duration_seconds_count", **latency)
        - value(before, "http_request_duration_seconds_count", **latency)
        == 4
    )


async def test_every_configured_client_has_its_own_label_however_many(
    settings: Settings, db: asyncpg.Pool
) -> None:
    many = tuple(client(f"job-{n}", {"users:read"}) for n in range(MAX_UNCONFIGURED_CLIENTS + 20))
    async with client_of(replace(settings, api_clients=many)) as service:
        for job in many:
            await service.get("/users/nobody@x.io", headers=bearer(token_of(job.name)))
        text = await scrape(service)
    labels = {"method": "GET", "route": "/users/{user}", "status": "404"}
    for job in many:
        assert value(text, "http_requests_total", **labels, client=job.name) >= 1, job.name
    assert value(text, "http_requests_total", **labels, client=OTHER_CLIENTS) == 0


def test_past_100_unconfigured_names_a_worker_labels_the_rest_other() -> None:
    labels = ClientLabels()
    labels.configure(["reporting", "token-1"])
    names = [f"jwt-client-{n}" for n in range(MAX_UNCONFIGURED_CLIENTS)]
    assert [labels.label(name) for name in names] == names
    assert labels.label("one-too-many") == OTHER_CLIENTS
    assert labels.label("another") == OTHER_CLIENTS
    # Names already labelled keep their label, and configured ones always have theirs.
    assert labels.label(names[0]) == names[0]
    assert labels.label(names[-1]) == names[-1]
    assert labels.label("reporting") == "reporting"
    assert labels.label("token-1") == "token-1"


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


async def test_changes_written_are_counted_by_type_once_committed(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    before = await scrape(client)
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
    await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})  # 409
    await client.post(
        "/users/bulk", json=[{"name": "Bo", "email": f"bo{n}@x.io"} for n in range(3)]
    )
    await client.post("/users/bulk", json=[{"name": "Bo", "email": "bo0@x.io"}])  # 409
    await client.patch("/users/ann@x.io", json={"name": "Ann B"})
    await client.patch("/users/ann@x.io", json={"name": "Ann B"})  # changes nothing
    await client.delete("/users/bo0@x.io")
    await client.delete("/users/bo0@x.io")  # 404
    after = await scrape(client)
    written = {
        kind: value(after, "feed_changes_written_total", type=kind)
        - value(before, "feed_changes_written_total", type=kind)
        for kind in ("created", "updated", "deleted")
    }
    [stored] = await db.fetch("SELECT count(*) FROM user_changes WHERE type <> 'deleted'")
    assert written == {"created": 4, "updated": 1, "deleted": 1}
    assert stored[0] == 4  # Ann's two, and two of the bulk's; bo0's went with it


async def test_feed_requests_are_counted_by_how_they_read(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    await client.get("/users/changes")
    await client.get("/users/changes", params={"after": "now"})
    await client.get("/users/changes", params={"wait": 1})
    after = await scrape(client)
    grown = {
        mode: value(after, "feed_requests_total", mode=mode)
        - value(before, "feed_requests_total", mode=mode)
        for mode in ("page", "long_poll", "stream")
    }
    assert grown == {"page": 2, "long_poll": 1, "stream": 0}


async def test_the_feed_delay_is_how_long_a_running_transaction_has_held_changes_back(
    client: httpx.AsyncClient, database_url: str
) -> None:
    assert value(await scrape(client), "feed_delay_seconds") == 0
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.fetchval("SELECT pg_current_xact_id()")  # holds an id, writes nothing
            await client.post("/users", json={"name": "Ann", "email": "ann@x.io"})
            await asyncio.sleep(1.2)
            held = value(await scrape(client), "feed_delay_seconds")
    finally:
        await holder.close()
    assert 1.2 <= held < 10
    assert value(await scrape(client), "feed_delay_seconds") == 0


def test_open_streams_of_the_feed_are_a_gauge(
    db: asyncpg.Pool, tmp_path: Path, services: list[Service], database_url: str
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url})
    services.append(service)
    service.wait_ready()

    async def streams_open_then_closed() -> tuple[float, float, float]:
        headers = {"Accept": "text/event-stream"}
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            async with (
                client.stream("GET", "/users/changes", headers=headers),
                client.stream("GET", "/users/changes", headers=headers),
            ):
                opened = await gauge_reaches(client, 2)
                requested = value(await scrape(client), "feed_requests_total", mode="stream")
            return opened, requested, await gauge_reaches(client, 0)

    async def gauge_reaches(client: httpx.AsyncClient, count: int) -> float:
        """The open streams once they are `count`, or after 10 s: a stream is
        counted once its answer's head is sent, and uncounted once it ends."""
        deadline = time.monotonic() + 10
        while (streams := value(await scrape(client), "feed_streams_open")) != count:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return streams

    assert asyncio.run(streams_open_then_closed()) == (2, 2, 0)


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
        "API_TOKENS": TOKEN,
    }
    service = Service(tmp_path, env)
    services.append(service)
    service.wait_ready()
    labels = {"method": "GET", "route": "/users/{user}", "status": "404", "client": "token-1"}
    refused = {**labels, "status": "401", "client": ""}
    for n in range(40):  # a connection each, so both workers answer some
        response = httpx.get(f"{service.url}/users/nobody{n}@x.io", headers=bearer(TOKEN))
        assert response.status_code == 404
        assert httpx.get(f"{service.url}/users/nobody{n}@x.io").status_code == 401
    # Whichever worker answers the scrape, it reports both workers' counts.
    for _ in range(6):
        text = scrape_http(service)
        assert value(text, "http_requests_total", **labels) == 40
        assert value(text, "http_requests_total", **refused) == 40
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
