"""What the numbers were measured on: the machine and the versions of everything in the path."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

import psutil

from bench.wrk import wrk_binary

PACKAGES = (
    "uvicorn", "uvloop", "httptools", "starlette", "asyncpg", "msgspec", "fastapi", "pydantic",
    "litestar", "httpx",
)  # fmt: skip


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_machine() -> dict[str, str]:
    return {
        "CPU": cpu_model(),
        "Cores": f"{os.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical",
        "Memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": platform.platform(),
    }


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def wrk_version() -> str:
    # wrk -v prints its banner and exits with status 1.
    completed = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    first_line = (completed.stdout or completed.stderr).splitlines()[:1]
    return first_line[0].split(" Copyright")[0].strip() if first_line else "unknown"


def describe_versions(postgres_version: str) -> dict[str, str]:
    return {
        "Python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "PostgreSQL": postgres_version,
        "wrk": wrk_version(),
    }
