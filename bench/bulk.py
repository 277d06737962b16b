"""POST /users/bulk driven from Python, since wrk is awkward with 10,000-user bodies."""

from __future__ import annotations

import statistics
import time

import httpx
import msgspec

BULK_ROWS = 10_000
REQUEST_TIMEOUT = 300.0


class BulkSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Repeated inserts of BULK_ROWS rows: over HTTP here, or by COPY in bench/copy_limit.py."""

    requests: int
    non_2xx: int
    # Seconds each repetition took.
    median_seconds: float
    p99_seconds: float

    @property
    def rows_per_second(self) -> float:
        return BULK_ROWS / self.median_seconds if self.median_seconds else 0.0


def bulk_users(nonce: str, batch: int) -> list[tuple[str, str]]:
    """BULK_ROWS fresh (name, email) pairs, unique to the nonce and the batch."""
    return [
        ("Bench User", f"bulk-{nonce}-{batch}-{index}@example.com") for index in range(BULK_ROWS)
    ]


def bulk_body(nonce: str, batch: int) -> bytes:
    return msgspec.json.encode(
        [{"name": name, "email": email} for name, email in bulk_users(nonce, batch)]
    )


def summarize(latencies: list[float], non_2xx: int) -> BulkSummary:
    latencies = sorted(latencies)
    return BulkSummary(
        requests=len(latencies),
        non_2xx=non_2xx,
        median_seconds=statistics.median(latencies),
        p99_seconds=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def run_bulk(url: str, *, duration: int, nonce: str) -> BulkSummary:
    """Sequential requests of fresh users until duration has passed (at least one request).

    Only the time inside requests counts, so building bodies here does not lower rows/s.
    """
    non_2xx = 0
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        while not latencies or time.monotonic() < deadline:
            body = bulk_body(nonce, len(latencies))
            started = time.perf_counter()
            response = client.post(
                "/users/bulk", content=body, headers={"Content-Type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if not response.is_success:
                non_2xx += 1
    return summarize(latencies, non_2xx)
