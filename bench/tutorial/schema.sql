-- The tutorial's table, in its own database. The index on email is the one change
-- from the tutorial, which has none: without it every lookup would scan the table.
CREATE TABLE users (
    name text NOT NULL,
    email text NOT NULL
);
CREATE INDEX users_email ON users (email);
