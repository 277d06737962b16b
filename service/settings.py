"""Settings read from the environment once, validated at start."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import msgspec

T = TypeVar("T")

SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


class SettingsError(Exception):
    """An environment variable has a value the service cannot start with."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    port: int = 8000
    web_concurrency: int = 1
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_command_timeout: float = 10.0
    max_body_bytes: int = 64 * 1024
    max_bulk_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{name}={raw!r}: {exc}") from None

        settings = cls(
            database_url=read("DATABASE_URL", parse_database_url, None),
            port=read("PORT", integer(1, 65535), 8000),
            web_concurrency=read("WEB_CONCURRENCY", integer(1, 64), 1),
            db_pool_min=read("DB_POOL_MIN", integer(0, 1000), 1),
            db_pool_max=read("DB_POOL_MAX", integer(1, 1000), 10),
            db_command_timeout=read("DB_COMMAND_TIMEOUT", seconds, 10.0),
            max_body_bytes=read("MAX_BODY_BYTES", integer(1, 2**31), 64 * 1024),
            max_bulk_bytes=read("MAX_BULK_BYTES", integer(1, 2**31), 16 * 1024 * 1024),
            log_level=read("LOG_LEVEL", log_level, "INFO"),
        )
        if settings.db_pool_min > settings.db_pool_max:
            raise SettingsError(
                f"DB_POOL_MIN={settings.db_pool_min} is greater than "
                f"DB_POOL_MAX={settings.db_pool_max}"
            )
        return settings


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()):
            raise ValueError("expected a whole number")
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not 0 < value <= 3600:
        raise ValueError("expected a number of seconds above 0 and at most 3600")
    return value


def log_level(raw: str) -> str:
    level = raw.upper()
    if level not in logging.getLevelNamesMapping():
        raise ValueError("expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def parse_database_url(raw: str) -> str:
    # asyncpg accepts both schemes and reads sslmode itself; this only turns a
    # typo into a clear start-up error instead of a failure at first connect.
    parts = urlsplit(raw)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("expected a postgres:// or postgresql:// URL")
    for mode in parse_qs(parts.query).get("sslmode", []):
        if mode not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(sorted(SSL_MODES))}")
    return raw
