"""POST /users/bulk driven from Python, since wrk is awkward with 10,000-row bodies."""

from __future__ import annotations

import time

import httpx
import msgspec

BULK_ROWS = 10_000
REQUEST_TIMEOUT = 300.0


class BulkSummary(msgspec.Struct, frozen=True, kw_only=True):
    rows: int
    seconds: float
    requests: int
    non_2xx: int
    p99_us: int

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def bulk_body(nonce: str, batch: int) -> bytes:
    users = [
        {"name": "Bench User", "email": f"bulk-{nonce}-{batch}-{index}@example.com"}
        for index in range(BULK_ROWS)
    ]
    return msgspec.json.encode(users)


def run_bulk(url: str, *, duration: int, nonce: str) -> BulkSummary:
    """Sequential requests of fresh users until duration has passed (at least one request).

    Only the time inside requests counts, so building bodies here does not lower rows/s.
    """
    rows = non_2xx = 0
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
            if response.is_success:
                rows += BULK_ROWS
            else:
                non_2xx += 1
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return BulkSummary(
        rows=rows,
        seconds=sum(latencies),
        requests=len(latencies),
        non_2xx=non_2xx,
        p99_us=int(p99 * 1_000_000),
    )
