#!/usr/bin/env bash
# pgbouncer in transaction pooling mode in front of a PostgreSQL server, for CI.
#
#   .ci/pgbouncer.sh start DIR   write DIR/pgbouncer.ini, start pgbouncer, print its port
#   .ci/pgbouncer.sh check DIR   assert it pools by transaction and served the test database
#   .ci/pgbouncer.sh stop DIR    stop the pgbouncer whose pid is in DIR/pgbouncer.pid
#
# UPSTREAM_HOST and UPSTREAM_PORT (127.0.0.1, 5432) name the server, which must
# trust the user `postgres`; PGBOUNCER_PORT picks the port (default: a free one).
# check needs psql: pgbouncer's admin console speaks only the simple protocol.
set -euo pipefail

action=${1:?usage: $0 start|check|stop DIR}
dir=${2:?usage: $0 start|check|stop DIR}

start() {
    local port
    port=${PGBOUNCER_PORT:-$(free_port)}
    # Any name maps to the database of that name upstream, so the tests that
    # create and drop databases reach theirs through pgbouncer as well.
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=${UPSTREAM_HOST:-127.0.0.1} port=${UPSTREAM_PORT:-5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
pool_mode = transaction
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
max_client_conn = 200
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    # trust still requires the user to be listed.
    echo '"postgres" ""' >"$dir/userlist.txt"
    echo "$port" >"$dir/port"
    if [ "$(id -u)" = 0 ]; then
        # pgbouncer refuses to run as root.
        chown -R postgres "$dir"
        runuser -u postgres -- pgbouncer --daemon "$dir/pgbouncer.ini"
    else
        pgbouncer --daemon "$dir/pgbouncer.ini"
    fi
    for _ in $(seq 50); do
        if (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
        sleep 0.1
    done
    echo "pgbouncer did not start listening on port $port:" >&2
    cat "$dir/pgbouncer.log" >&2 || true
    return 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Column $2 of the admin console's SHOW $1, in the row whose first column is $3.
show() {
    psql "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/pgbouncer" \
        --no-psqlrc --no-align --field-separator '|' --command "SHOW $1" |
        awk -F '|' -v column="$2" -v row="$3" '
            NR == 1 { for (i = 1; i <= NF; i++) if ($i == column) wanted = i; next }
            $1 == row && wanted { print $wanted }'
}

check() {
    local mode transactions
    mode=$(show POOLS pool_mode test)
    transactions=$(show STATS total_xact_count test)
    echo "pgbouncer: pool_mode=$mode, transactions served for database test: ${transactions:-none}"
    case $mode/$transactions in
        transaction/[1-9]*) ;;
        *)
            echo "pgbouncer did not serve the test database in transaction mode" >&2
            return 1
            ;;
    esac
}

stop() {
    local pid
    pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "pgbouncer (pid $pid) did not stop" >&2
    return 1
}

case $action in
    start | check | stop) "$action" ;;
    *) echo "usage: $0 start|check|stop DIR" >&2 && exit 2 ;;
esac
