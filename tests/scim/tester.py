"""scim2-tester's checks of one resource type, run over HTTP against a live service."""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import uuid
from pathlib import Path
from typing import Any

import httpx2
import scim2_tester
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server, filling

from tests.conftest import Service


async def failed_checks(
    tmp_path: Path, database_url: str, services: list[Service], resource_type: str
) -> tuple[list[tuple[str, Any, str | None]], int]:
    """The checks that failed, and how many ran. Its generated userNames are
    random text, which a service whose userName is an email refuses: they are
    made emails, the one change to its checks."""
    service = Service(tmp_path, {"DATABASE_URL": database_url})
    services.append(service)
    service.wait_ready()
    generated = filling.generate_random_value

    def as_email(context: Any, path: Any, mutability: Any = None, required: Any = None) -> Any:
        value = generated(context, path, mutability, required)
        if str(path).endswith("userName") and isinstance(value, str):
            return f"{uuid.uuid4()}@example.com"
        return value

    modules = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(scim2_tester.__path__, "scim2_tester.")
    ]
    users = [m for m in modules if getattr(m, "generate_random_value", None) is generated]
    for module in users:
        module.generate_random_value = as_email  # type: ignore[attr-defined]
    try:
        # In a thread: the checker's client is synchronous, and the app's event
        # loop (its pool, its watch) must go on running meanwhile.
        results = await asyncio.to_thread(run_checks, f"{service.url}/scim/v2/", resource_type)
    finally:
        for module in users:
            module.generate_random_value = generated  # type: ignore[attr-defined]
    failed = [(r.title, r.status, r.reason) for r in results if r.status != Status.SUCCESS]
    return failed, len(results)


def run_checks(base_url: str, resource_type: str) -> list[Any]:
    with httpx2.Client(base_url=base_url) as client:
        return list(check_server(SyncSCIMClient(client), resource_types=[resource_type]))
