"""The users service: a JSON API over PostgreSQL."""
