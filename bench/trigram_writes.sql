-- pgbench -n -c 8 -j 2 -T 15 -f bench/trigram_writes.sql <database>: the service's
-- INSERT of two users a statement, for the write cost of the search index's settings.
\set n random(1, 1000000000)
INSERT INTO users (name, email) SELECT name, email FROM unnest(ARRAY['Bench User ' || :n, 'Other Person ' || :n], ARRAY['bench' || :n || '.x@example.com', 'other' || :n || '@mail.example.org']) AS new(name, email) ON CONFLICT ((lower(email))) DO NOTHING;
