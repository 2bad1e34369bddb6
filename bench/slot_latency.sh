#!/usr/bin/env bash
# Slot to first email, slot to last email: how soon a daily slot's digests reach an SMTP
# server after the slot's instant, with `herald daemon` planning and sending them.
#
#   bench/slot_latency.sh sqlite|postgres [READERS] [CONNECTIONS]   (defaults: 100000 8)
#   HERALD=/path/to/herald bench/slot_latency.sh …    another build (default: the release
#                                                      build of this tree)
#   ROUNDS=3 bench/slot_latency.sh …                   three runs, each on a fresh database
#
# 1. makes a site with one region, a feed of 20 articles (a digest of about 37 KB) and
#    READERS confirmed readers in one zone (UTC), all following the region daily, seeded
#    in SQL (SQLite file, or a new PostgreSQL database on 127.0.0.1 named herald_slot_N);
# 2. starts Postfix's smtp-sink with its running counters (-c), read by a small script
#    that stamps the instant each message's final dot arrives;
# 3. starts `herald daemon` with its clock shifted (HERALD_TEST_CLOCK_OFFSET) so that the
#    07:00 UTC slot comes 20 s after start; the daemon polls the feed, plans the slot and
#    sends;
# 4. prints the time from the slot's instant to the first and to the last message the
#    sink received, and, as the reference, the time `smtp-source` takes to send the same
#    number of messages of the same size into the same sink.
set -euo pipefail
cd "$(dirname "$0")/.."
BACKEND=${1:?usage: bench/slot_latency.sh sqlite|postgres [READERS] [CONNECTIONS]}
N=${2:-100000}
C=${3:-8}
ROUNDS=${ROUNDS:-1}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
HERALD=${HERALD:-$PWD/target-release/release/herald}
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
case $BACKEND in sqlite | postgres) ;; *) echo "backend must be sqlite or postgres" >&2; exit 2 ;; esac
[ -x "$HERALD" ] || { echo "no herald binary at $HERALD (cargo build --release)" >&2; exit 2; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit(f"nothing listens on port {sys.argv[1]}")
PY
}

WORK=$(mktemp -d /tmp/herald-slot.XXXXXX)
chmod 777 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# The sink, and a reader of its counters that writes each message's arrival time.
PORT=$(free_port)
"$SINK" -c -u nobody -m 512 "127.0.0.1:$PORT" 1024 > "$WORK/sink.fifo.out" &
PIDS+=($!)
wait_port "$PORT"
# smtp-sink rewrites one counter line ("sess=… quit=… mesg=M\r") as messages arrive:
# stamp the instant each new M is read.
python3 -u - "$WORK/sink.fifo.out" "$WORK/arrivals" <<'PY' &
import os, re, sys, time
src, out = sys.argv[1], open(sys.argv[2], "w", buffering=1)
f = open(src, "rb", buffering=0)
last = 0
while True:
    chunk = f.read(65536)
    if not chunk:
        time.sleep(0.001)
        continue
    now = time.time()
    counts = re.findall(rb"mesg=(\d+)", chunk)
    if counts:
        m = int(counts[-1])
        if m > last:
            out.write(f"{now:.6f} {m}\n")
            last = m
PY
PIDS+=($!)

# A feed of 20 articles for the one region (stored on the first poll, before the slot).
mkdir -p "$WORK/feeds"
python3 - "$WORK/feeds/town.xml" <<'PY'
import sys
items = "".join(
    f"<item><title>Council story {i}: the budget, the bridge and the schools</title>"
    f"<link>https://bench.example/town/{i}</link><guid>town-{i}</guid>"
    f"<pubDate>Tue, 12 Jan 2027 20:00:00 +0000</pubDate>"
    f"<description>{'A summary of what happened at the meeting and what comes next. ' * 6}</description></item>"
    for i in range(20)
)
open(sys.argv[1], "w").write(
    f'<?xml version="1.0"?><rss version="2.0"><channel><title>Town</title>'
    f"<link>https://bench.example/</link><description>Town news</description>{items}</channel></rss>"
)
PY

round() {
    local r=$1 url
    case $BACKEND in
        sqlite) url="sqlite://$WORK/herald-$r.db" ;;
        postgres)
            url="$PG/herald_slot_$r"
            psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS herald_slot_$r" >/dev/null
            psql "$PG/postgres" -qc "CREATE DATABASE herald_slot_$r" >/dev/null
            ;;
    esac
    cat > "$WORK/herald-$r.toml" <<EOF
[database]
url = "$url"
[http]
listen = "127.0.0.1:$(free_port)"
public_url = "https://bench.example"
[mail]
from = "Town News <news@bench.example>"
postal_address = "1 Bench Street, Example Town"
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = $PORT
tls = "none"
connections = $C
[schedule]
daily = "0 7 * * *"
[[regions]]
slug = "town"
name = "Town"
timezone = "UTC"
feeds = ["file://$WORK/feeds/town.xml"]
EOF
    # herald's clock: 06:59:40 UTC on 2027-01-13 at start, so the slot comes in 20 s.
    local slot_herald=1799823600 # 2027-01-13T07:00:00Z
    local offset=$((slot_herald - 20 - $(date +%s)))
    export HERALD_TEST_CLOCK_OFFSET=$offset
    "$HERALD" --config "$WORK/herald-$r.toml" migrate >/dev/null
    local since=$((slot_herald - 3 * 86400))
    local seed="INSERT INTO subscribers (email, state, timezone, created_at, confirmed_at, updated_at)
        SELECT 'reader' || n || '@bench.example', 'confirmed', 'UTC', $since, $since, $since FROM seq;
        INSERT INTO subscriptions (subscriber_id, region_slug, cadence, created_at)
        SELECT id, 'town', 'daily', $since FROM subscribers;"
    case $BACKEND in
        sqlite)
            sqlite3 "$WORK/herald-$r.db" "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < $N) ${seed%%;*};
                ${seed#*;}"
            ;;
        postgres)
            psql "$url" -q -c "CREATE TEMP TABLE seq AS SELECT generate_series(0, $N - 1) AS n; $seed" -c "VACUUM (ANALYZE)"
            ;;
    esac
    "$HERALD" --config "$WORK/herald-$r.toml" ingest >/dev/null
    local before
    before=$(tail -n1 "$WORK/arrivals" 2>/dev/null | cut -d' ' -f2)
    before=${before:-0}
    "$HERALD" --config "$WORK/herald-$r.toml" daemon > "$WORK/daemon-$r.log" 2>&1 &
    local daemon=$!
    # The slot's instant on this machine's clock.
    local slot_at=$((slot_herald - offset))
    local want=$((before + N))
    local deadline=$((slot_at + 600))
    while :; do
        local got
        got=$(tail -n1 "$WORK/arrivals" 2>/dev/null | cut -d' ' -f2)
        [ "${got:-0}" -ge "$want" ] && break
        [ "$(date +%s)" -ge "$deadline" ] && { echo "round $r: timed out at ${got:-0}/$want" >&2; break; }
        sleep 0.5
    done
    kill -TERM "$daemon"
    wait "$daemon" || true
    unset HERALD_TEST_CLOCK_OFFSET
    python3 - "$WORK/arrivals" "$before" "$want" "$slot_at" "$r" <<'PY'
import sys
arrivals, before, want, slot, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
rows = [l.split() for l in open(arrivals)]
rows = [(float(t), int(m)) for t, m in rows if int(m) > before]
first = rows[0][0]
last = next((t for t, m in rows if m >= want), rows[-1][0])
print(f"round {r}: slot to first email {first - slot:.2f} s, slot to last email {last - slot:.2f} s "
      f"({rows[-1][1] - before} messages)")
PY
    # The reference: smtp-source sends as many messages of the digest's size into the sink.
    local size
    size=$("$HERALD" --config "$WORK/herald-$r.toml" preview --region town --format eml | wc -c)
    local start end
    start=$(date +%s.%N)
    "$SOURCE" -d -s "$C" -m "$N" -l "$size" "127.0.0.1:$PORT"
    end=$(date +%s.%N)
    echo "round $r: smtp-source, $N messages of $size bytes over $C connections: $(python3 -c "print(f\"{$end - $start:.2f}\")") s"
    if [ "$BACKEND" = postgres ]; then
        psql "$PG/postgres" -qc "DROP DATABASE herald_slot_$r" >/dev/null
    else
        rm -f "$WORK/herald-$r.db"*
    fi
}

for r in $(seq 1 "$ROUNDS"); do
    round "$r"
done
