#!/usr/bin/env bash
# Measures the retention purge's cost on a scratch PostgreSQL: time and WAL per 1,000
# terminal executions purged (each with 2 steps and 5 events, as a small playbook leaves
# them), in batches of 500 as the server deletes them. Usage: scripts/purge-cost.sh [N]
set -euo pipefail
# PostgreSQL refuses to run as root: run as its OS user then.
if [ "$(id -u)" = 0 ]; then exec runuser -u postgres -- "$0" "$@"; fi
N=${1:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'pg_ctl -D "$DIR" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
initdb -D "$DIR" -U postgres >/dev/null
pg_ctl -D "$DIR" -o "-p $PORT -k $DIR -c listen_addresses=''" -l "$DIR/log" -w start >/dev/null
q() { psql -h "$DIR" -p "$PORT" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 "$@"; }
for m in "$ROOT"/migrations/*.sql; do q -f "$m" >/dev/null; done
q <<SQL
INSERT INTO executions (execution_id, status, playbook_name, playbook, tenant, updated_at)
SELECT i, 'succeeded', 'p', '{"name":"p","steps":[{"name":"a","action":"noop"},{"name":"b","action":"noop"}]}',
       'default', now() - interval '1 hour'
FROM generate_series(1, $N) i;
INSERT INTO execution_steps (execution_id, step_index, name, status, result)
SELECT i, s, 's', 'succeeded', '{"ok":true}' FROM generate_series(1, $N) i, generate_series(0, 1) s;
INSERT INTO execution_events (execution_id, seq, kind, payload)
SELECT i, e, 'step_succeeded', '{"step":"a","attempt":1,"with":{"x":1}}'
FROM generate_series(1, $N) i, generate_series(1, 5) e;
VACUUM ANALYZE;
SQL
start_lsn=$(q -c "SELECT pg_current_wal_lsn()")
start=$(date +%s.%N)
purged=0
while :; do
  n=$(q <<'SQL'
BEGIN;
SELECT coalesce(array_agg(execution_id), '{}') AS ids FROM (
  SELECT execution_id FROM executions
  WHERE status IN ('succeeded', 'failed', 'cancelled')
    AND updated_at < now() - 1000 * interval '1 millisecond' AND tenant <> ALL('{}'::text[])
  ORDER BY updated_at LIMIT 500 FOR UPDATE SKIP LOCKED) doomed \gset
WITH events AS (DELETE FROM execution_events WHERE execution_id = ANY(:'ids'::bigint[])),
steps AS (DELETE FROM execution_steps WHERE execution_id = ANY(:'ids'::bigint[])),
commands AS (DELETE FROM outbox WHERE execution_id = ANY(:'ids'::bigint[])),
dead AS (DELETE FROM outbox_dead_letters WHERE execution_id = ANY(:'ids'::bigint[])),
gone AS (DELETE FROM executions WHERE execution_id = ANY(:'ids'::bigint[]) RETURNING 1)
SELECT count(*) FROM gone;
COMMIT;
SQL
)
  n=$(echo "$n" | grep -E '^[0-9]+$' | tail -1)
  purged=$((purged + n))
  [ "$n" -lt 500 ] && break
done
end=$(date +%s.%N)
wal=$(q -c "SELECT pg_current_wal_lsn() - '$start_lsn'::pg_lsn")
python3 - "$purged" "$start" "$end" "$wal" <<'PY'
import sys
n, start, end, wal = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(float(sys.argv[4]))
print(f"purged {n} executions in {end-start:.2f} s: {1000*(end-start)/n*1000:.1f} ms and "
      f"{wal/n*1000/1024/1024:.2f} MiB of WAL per 1,000 executions")
PY
