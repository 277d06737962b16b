"""python -m service and the Procfile, as real processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from service.__main__ import uvicorn_args
from service.database import POOL_CLOSE_SECONDS
from service.settings import Settings
from tests.conftest import (
    REFUSALS,
    ROOT,
    GuardedDatabase,
    Service,
    alive,
    free_port,
    stop_services,
)


def procfile() -> dict[str, str]:
    entries = [line.partition(":") for line in (ROOT / "Procfile").read_text().splitlines()]
    return {name.strip(): command.strip() for name, _, command in entries}


def test_procfile_serves_and_migrates_through_python_m_service() -> None:
    assert procfile() == {
        "web": "LOG_FORMAT=${LOG_FORMAT:-json} exec python -m service",
        "release": "LOG_FORMAT=${LOG_FORMAT:-json} python -m service migrate",
        "relay": "LOG_FORMAT=${LOG_FORMAT:-json} exec python -m service relay",
    }


def test_procfile_web_command_logs_json_lines(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        ["sh", "-c", procfile()["web"]],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "PORT": str(port)},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            try:
                httpx.get(f"http://127.0.0.1:{port}/users/nobody@x.io", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    warning = next(line for line in lines if "API_TOKENS" in line["message"])
    assert warning["level"] == "WARNING"
    miss = next(line for line in lines if line.get("status") == 404)
    assert miss["route"] == "/users/{user}"
    assert len(miss["request_id"]) == 32


def test_uvicorn_is_set_up_for_a_router_in_front() -> None:
    args = uvicorn_args(
        "service.app:create_app",
        host="0.0.0.0",  # noqa: S104
        port=5000,
        workers=3,
        graceful_timeout=Settings().graceful_timeout,
    )
    assert args[:2] == ["service.app:create_app", "--factory"]

    def flag(name: str) -> str:
        return args[args.index(name) + 1]

    assert flag("--port") == "5000"
    assert flag("--workers") == "3"
    assert flag("--forwarded-allow-ips") == "*"
    assert "--proxy-headers" in args
    assert "--no-access-log" in args
    assert int(flag("--timeout-keep-alive")) > 100
    assert int(flag("--timeout-graceful-shutdown")) + POOL_CLOSE_SECONDS < 30


def test_embedded_default_serves_keeps_users_across_restarts_and_stops_cleanly(
    tmp_path: Path, services: list[Service]
) -> None:
    env = {"DATABASE_URL": ""}
    first = Service(tmp_path, env)
    services.append(first)
    first.wait_ready()
    output = first.output()
    assert f"API:      http://127.0.0.1:{first.port}/users" in output
    assert re.search(r"Database: postgresql://\S+", output)
    created = httpx.post(f"{first.url}/users", json={"name": "Ann", "email": "ann@x.io"})
    assert created.status_code == 201
    postmaster = int((tmp_path / ".pgdata" / "postmaster.pid").read_text().split()[0])
    worker = int(re.findall(r"Started server process \[(\d+)\]", output)[0])

    assert first.stop(signal.SIGTERM) == 0, first.output()
    assert not alive(worker)
    assert not alive(postmaster)
    assert not (tmp_path / ".pgdata" / "postmaster.pid").exists()

    second = Service(tmp_path, env)
    services.append(second)
    second.wait_ready()
    fetched = httpx.get(f"{second.url}/users/ANN@x.io")
    assert fetched.status_code == 200
    assert fetched.json()["name"] == "Ann"
    postmaster = int((tmp_path / ".pgdata" / "postmaster.pid").read_text().split()[0])

    assert second.stop(signal.SIGINT) == 0, second.output()  # Ctrl-C
    assert not alive(postmaster)


def test_after_a_killed_run_a_clean_stop_still_stops_the_embedded_database(
    tmp_path: Path, services: list[Service]
) -> None:
    env = {"DATABASE_URL": ""}
    killed = Service(tmp_path, env)
    services.append(killed)
    killed.wait_ready()
    killed.process.kill()  # SIGKILL: nothing of the service runs after it
    killed.process.wait(30)
    pid_file = tmp_path / ".pgdata" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    try:
        assert alive(postmaster)  # left running by the killed run, as expected
        again = Service(tmp_path, env)
        services.append(again)
        again.wait_ready()
        postmaster = int(pid_file.read_text().split()[0])

        assert again.stop(signal.SIGTERM) == 0, again.output()
        assert not alive(postmaster), again.output()
        assert not pid_file.exists()
    finally:
        if alive(postmaster):
            os.kill(postmaster, signal.SIGQUIT)  # postgres's immediate stop


def test_with_database_url_it_serves_that_database(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": database_url})
    services.append(service)
    service.wait_ready()
    response = httpx.post(f"{service.url}/users", json={"name": "Bo", "email": "bo@x.io"})
    assert response.status_code == 201
    assert service.stop(signal.SIGTERM) == 0
    assert not (tmp_path / ".pgdata").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "eighty"), ("DB_POOL_MAX", "lots"), ("DATABASE_URL", "mysql://h/db")],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(name: str, value: str) -> None:
    result = run_service({name: value}, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        next(line for line in result.stderr.splitlines() if line.startswith("configuration error"))
    ]
    assert f"{name}=" in result.stderr


def test_with_json_logs_a_bad_setting_stops_start_up_with_one_json_line() -> None:
    result = run_service({"PORT": "eighty", "LOG_FORMAT": "json"}, timeout=30)
    assert result.returncode != 0
    [line] = result.stderr.splitlines()
    error = json.loads(line)
    assert error["level"] == "ERROR"
    assert error["message"] == "configuration error: PORT='eighty': expected a whole number"


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_on_its_own_with_a_bad_setting_stops_instead_of_restarting(workers: int) -> None:
    args = uvicorn_args(
        "service.app:create_app",
        host="127.0.0.1",
        port=free_port(),
        workers=workers,
        graceful_timeout=Settings().graceful_timeout,
    )
    env = {"DATABASE_URL": "postgresql://h/db", "DB_COMMAND_TIMEOUT": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "configuration error: DB_COMMAND_TIMEOUT='-1'" in result.stderr
    if workers == 1:
        # With workers, uvicorn's supervisor stops but exits 0 itself.
        assert result.returncode != 0


def test_a_service_the_tests_stop_leaves_no_metrics_folder_behind(
    tmp_path: Path, database_url: str
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    service = Service(tmp_path, {"DATABASE_URL": database_url, "TMPDIR": str(temp)})
    try:
        service.wait_ready()
        assert list(temp.glob("users-metrics-*")), service.output()  # there while it serves
    finally:
        stop_services([service])
    assert list(temp.glob("users-metrics-*")) == [], service.output()


def start_without_a_database(
    workers: int, log_format: str = "text"
) -> subprocess.CompletedProcess[str]:
    """python -m service on a port where no database listens, waiting for it 0.5 s."""
    env = {
        "DATABASE_URL": f"postgresql://users@127.0.0.1:{free_port()}/users",
        "DB_START_TIMEOUT": "0.5",
        "WEB_CONCURRENCY": str(workers),
        "LOG_FORMAT": log_format,
        "PORT": str(free_port()),
    }
    return run_service(env, timeout=60)


def run_service(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """python -m service to its end, with `env` on top of this environment."""
    return subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_the_process_exits_non_zero_when_the_service_cannot_start(workers: int) -> None:
    result = start_without_a_database(workers)
    # uvicorn's code for a failed start, which its supervisor also stops on.
    assert result.returncode == STARTUP_FAILURE, result.stderr


def not_json(output: str) -> list[str]:
    """The lines of `output` that are not a JSON object, as a log pipeline would drop them."""
    return [line for line in output.splitlines() if not is_json_object(line)]


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_with_workers_and_json_logs_every_line_is_json(
    tmp_path: Path, services: list[Service], database_url: str
) -> None:
    env = {"DATABASE_URL": database_url, "WEB_CONCURRENCY": "2", "LOG_FORMAT": "json"}
    service = Service(tmp_path, env)
    services.append(service)
    service.wait_ready()
    assert httpx.get(f"{service.url}/users/nobody@x.io").status_code == 404
    assert service.stop(signal.SIGTERM) == 0
    output = service.output()
    assert not_json(output) == []
    messages = [json.loads(line)["message"] for line in output.splitlines()]
    assert any(message.startswith("Started parent process") for message in messages), output
    assert any(message.startswith("Started server process") for message in messages), output
    assert any(message.startswith("Stopping parent process") for message in messages), output


def test_with_workers_and_json_logs_a_failed_start_is_json_too() -> None:
    result = start_without_a_database(workers=2, log_format="json")
    assert result.returncode != 0
    assert not_json(result.stdout + result.stderr) == []
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert any("failed to start" in message for message in messages), result.stderr


@pytest.mark.parametrize(("cause", "workers"), [("TLS refused", 2), ("wrong password", 1)])
def test_a_refusing_database_stops_start_up_at_once_with_one_line(
    guarded_database: GuardedDatabase, cause: str, workers: int
) -> None:
    env = {
        "DATABASE_URL": guarded_database.refused_url(cause),
        "WEB_CONCURRENCY": str(workers),
        "LOG_FORMAT": "json",
        "PORT": str(free_port()),
    }
    started = time.monotonic()
    result = run_service(env, timeout=90)
    took = time.monotonic() - started
    assert result.returncode == STARTUP_FAILURE, result.stderr
    assert took < 15, result.stderr  # DB_START_TIMEOUT is 30 s: no waiting
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    errors = [line["message"] for line in lines if line["level"] == "ERROR"]
    causes = [message for message in errors if "refused the service" in message]
    assert 1 <= len(causes) <= workers, result.stderr  # one line from each worker that tried
    assert all(REFUSALS[cause] in message for message in causes), result.stderr
    assert not any("Traceback" in line["message"] or "exception" in line for line in lines)
    assert not any("retrying" in line["message"] for line in lines)


def test_an_unmigrated_database_stops_start_up_with_one_line_saying_to_migrate(
    tmp_path: Path, services: list[Service], fresh_database_url: str
) -> None:
    service = Service(tmp_path, {"DATABASE_URL": fresh_database_url})
    services.append(service)
    code = service.process.wait(30)
    output = service.output()
    assert code == STARTUP_FAILURE, output
    said = [line for line in output.splitlines() if "migrate" in line]
    assert len(said) == 1, output
    assert said[0].startswith("ERROR    service: database at ")
    assert said[0].endswith(" has no users table: run `python -m service migrate`")
    assert "Traceback" not in output


def test_a_malformed_api_clients_entry_stops_start_up_with_one_line_naming_it() -> None:
    entry = {"name": "reporting", "scopes": ["users:write"], "token_sha256": "ab" * 32}
    result = run_service({"API_CLIENTS": json.dumps([entry])}, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "configuration error: API_CLIENTS[0] (reporting): unknown scope 'users:write'; the "
        "scopes are users:read, users:create, users:update, users:delete, users:changes, "
        "groups:read, groups:write, scim"
    ]


def token_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "token", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_token_command_prints_a_new_token_and_the_entry_holding_its_digest() -> None:
    first = token_command("reporting", "--scope", "users:read", "users:changes")
    again = token_command("reporting", "--scope", "users:read", "--scope", "users:changes")
    assert first.returncode == again.returncode == 0, first.stderr
    token, line = first.stdout.splitlines()
    assert len(token) >= 43
    assert token != again.stdout.splitlines()[0]
    assert json.loads(line) == {
        "name": "reporting",
        "scopes": ["users:read", "users:changes"],
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    assert Settings.from_env({"API_CLIENTS": f"[{line}]"}).api_clients[0].name == "reporting"
    assert "shown this once" in first.stderr
    assert "API_CLIENTS" in first.stderr


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        (["reporting"], "--scope"),
        (["reporting", "--scope", "users:write"], "invalid choice: 'users:write'"),
        (["has space", "--scope", "users:read"], "NAME must be"),
    ],
)
def test_the_token_command_refuses_a_bad_name_or_scope(args: list[str], fault: str) -> None:
    result = token_command(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert fault in result.stderr
