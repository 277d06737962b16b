-- The baseline's own table, recreated for every run; a plain index on email, as a tutorial would add.
DROP TABLE IF EXISTS baseline_users;
CREATE TABLE baseline_users (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX baseline_users_email ON baseline_users (email);
