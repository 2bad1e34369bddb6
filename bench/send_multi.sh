#!/usr/bin/env bash
# Several processes on one PostgreSQL database: the send rate of 1, 2 and 3 delivering
# processes against the local SMTP limit, measured in the same run.
#
#   bench/send_multi.sh [N] [SIZE] [CONNECTIONS]    (defaults: 30000 20000 12)
#   ROUNDS=3 bench/send_multi.sh …                  every step three times over
#   PG=postgres://postgres@127.0.0.1:5432/postgres  the server (a database is made on it)
#
# 1. starts Postfix's smtp-sink on a free port;
# 2. seeds N confirmed readers (UTC) and a feed whose digest is about SIZE bytes in a
#    fresh PostgreSQL database, and plans one daily slot for them (`herald plan`);
# 3. each round, for D = 1, 2, 3: measures `smtp-source -d -s C -m N -l SIZE` into the
#    sink (the reference), then copies the planned database and starts D
#    `herald deliver --until-empty` processes at once, C/D connections each (the same
#    connections in all), and times them until the last exits;
# 4. prints each rate and its ratio to the smtp-source run just before it.
# The release build lives in $CARGO_TARGET_DIR (default target/).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-30000}
SIZE=${2:-20000}
C=${3:-12}
ROUNDS=${ROUNDS:-1}
PG=${PG:-postgres://postgres@127.0.0.1:5432/postgres}
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)

cargo build --release --quiet
HERALD=${CARGO_TARGET_DIR:-$PWD/target}/release/herald
WORK=$(mktemp -d /tmp/herald-bench-multi.XXXXXX)
chmod 777 "$WORK"
DB=herald_bench_multi_$$
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SINK" -u nobody -m 512 "127.0.0.1:$PORT" 1024 &
SINK_PID=$!
cleanup() {
    kill $SINK_PID 2>/dev/null || true
    psql "$PG" -qAtc "DROP DATABASE IF EXISTS ${DB}_run WITH (FORCE)" >/dev/null 2>&1 || true
    psql "$PG" -qAtc "DROP DATABASE IF EXISTS ${DB} WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
python3 - "$PORT" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("smtp-sink did not start")
PY

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }
url() { python3 -c "import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p._replace(path='/' + sys.argv[2]).geturl())" "$PG" "$1"; }

python3 - "$WORK/feed.xml" "$SIZE" <<'PY'
import sys
items = []
for i in range(max(1, int(sys.argv[2]) // 2400)):
    summary = ("The council heard from residents about the plan for the riverside park, "
               "the new bus routes and the library's longer hours. ") * 4
    items.append(f"<item><guid>bench-{i}</guid><link>https://bench.example/story/{i}</link>"
                 f"<title>Benchmark story number {i} about the town</title>"
                 f"<description>{summary}</description><category>Community</category></item>")
open(sys.argv[1], "w").write('<?xml version="1.0"?><rss version="2.0"><channel><title>Bench</title>'
                             + "".join(items) + "</channel></rss>")
PY
# One daily slot, the current minute in UTC: due now, planned once, then copied.
SLOT=$(date -u +"%M %H")
cat > "$WORK/herald.toml" <<TOML
[database]
url = "$(url "$DB")"
[http]
public_url = "https://news.bench.example"
[mail]
from = "Bench News <news@bench.example>"
postal_address = "1 Bench Street, Testville"
transport = "smtp"
templates_dir = "$PWD/templates"
[smtp]
host = "127.0.0.1"
port = $PORT
[schedule]
daily = "$SLOT * * *"
[security]
secret = "bench"
[[regions]]
slug = "bench"
name = "Bench Town"
feeds = ["file://$WORK/feed.xml"]
TOML
export HERALD_CONFIG=$WORK/herald.toml
psql "$PG" -qAtc "CREATE DATABASE $DB" >/dev/null
"$HERALD" migrate >/dev/null
"$HERALD" ingest >/dev/null
DIGEST_BYTES=$("$HERALD" preview --region bench --format eml | wc -c)
python3 - "$WORK/readers.csv" "$N" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("email,regions,cadence,timezone\n")
    for i in range(int(sys.argv[2])):
        f.write(f"reader{i}@bench.example,bench,daily,UTC\n")
PY
"$HERALD" subscribers import "$WORK/readers.csv" --confirmed >/dev/null
"$HERALD" plan >/dev/null
PLANNED=$(psql "$(url "$DB")" -qAtc "SELECT COUNT(*) FROM deliveries WHERE state = 'queued'")
[ "$PLANNED" = "$N" ] || { echo "planned $PLANNED deliveries, not $N" >&2; exit 1; }

# D processes of `herald deliver --until-empty` on a fresh copy of the planned database,
# C/D connections each; sets ELAPSED_RATE and SENT.
deliver_with() {
    local d=$1 t0 t1 pids=()
    psql "$PG" -qAtc "DROP DATABASE IF EXISTS ${DB}_run WITH (FORCE)" >/dev/null
    psql "$PG" -qAtc "CREATE DATABASE ${DB}_run TEMPLATE $DB" >/dev/null
    t0=$(now)
    for _ in $(seq 1 "$d"); do
        HERALD__DATABASE__URL=$(url "${DB}_run") HERALD__SMTP__CONNECTIONS=$((C / d)) \
            "$HERALD" deliver --until-empty >/dev/null 2>>"$WORK/deliver.log" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    t1=$(now)
    ELAPSED_RATE=$(rate "$N" "$t0" "$t1")
    SENT=$(psql "$(url "${DB}_run")" -qAtc "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'")
}

declare -A RATES RATIOS SENTS
for round in $(seq 1 "$ROUNDS"); do
    for d in 1 2 3; do
        t0=$(now)
        "$SOURCE" -d -s "$C" -m "$N" -l "$SIZE" -f bench@herald.example -t sink@bench.example "127.0.0.1:$PORT"
        t1=$(now)
        source_rate=$(rate "$N" "$t0" "$t1")
        deliver_with "$d"
        RATES[$d]="${RATES[$d]:-}${RATES[$d]:+ / }$ELAPSED_RATE"
        RATIOS[$d]="${RATIOS[$d]:-}${RATIOS[$d]:+ / }$(python3 -c "print(f'{$ELAPSED_RATE / $source_rate:.2f}')")"
        SENTS[$d]="${SENTS[$d]:-}${SENTS[$d]:+ / }$SENT"
        echo "round $round, $d process(es): smtp-source $source_rate msg/s, herald $ELAPSED_RATE msg/s, $SENT sent" >&2
    done
done
echo "messages: $N  connections in all: $C  message size: smtp-source $SIZE B, herald digest $DIGEST_BYTES B  PostgreSQL"
for d in 1 2 3; do
    median=$(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1].split(\" / \"))):.2f}')" "${RATIOS[$d]}")
    echo "$d process(es), $((C / d)) connections each: ${RATES[$d]} msg/s, ratio to smtp-source ${RATIOS[$d]} (median $median), rows sent ${SENTS[$d]}"
done
