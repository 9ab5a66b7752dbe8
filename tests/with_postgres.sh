#!/usr/bin/env bash
# Run a command with TRAINWIRE_TEST_POSTGRES_URL pointing at a throwaway PostgreSQL cluster on
# 127.0.0.1 (Debian's `postgresql` package), stopped and removed afterwards, also on failure.
# As root the cluster runs as the package's `postgres` user (initdb refuses root).
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
    echo "with_postgres.sh: no PostgreSQL server here (apt-get install postgresql)" >&2
    exit 2
fi
dir=$(mktemp -d /tmp/trainwire-postgres.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
stop() {
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT

[ "$(id -u)" = 0 ] && chown postgres "$dir"
as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
# a test cluster: durability is not what is tested here, speed is welcome
options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$options" \
    >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
# `ctl stop` / `ctl start`: for the tests of a database that goes away and comes back
cat >"$dir/ctl" <<CTL
#!/usr/bin/env bash
set -eu
if [ "\$1" = start ]; then
    $( [ "$(id -u)" = 0 ] && echo "runuser -u postgres --" ) "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$options" >/dev/null 2>&1 || true
else
    $( [ "$(id -u)" = 0 ] && echo "runuser -u postgres --" ) "$bin/pg_ctl" -D "$dir/data" -m "\${2:-fast}" -w stop >/dev/null
fi
CTL
chmod +x "$dir/ctl"
echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"

TRAINWIRE_TEST_POSTGRES_CTL="$dir/ctl" \
    TRAINWIRE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres" "$@"
