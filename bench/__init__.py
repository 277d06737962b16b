"""Load benchmark of the users service against a FastAPI baseline and a bare-ASGI ceiling."""
