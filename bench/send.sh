#!/usr/bin/env bash
# Send-rate benchmark: herald against the local SMTP limit, measured in the same run.
#
#   bench/send.sh [N] [SIZE] [CONNECTIONS]      (defaults: 100000 20000 8)
#   ROUNDS=5 bench/send.sh …                     steps 2 and 3 five times over, in pairs
#   BASELINE=/path/to/herald ROUNDS=5 bench/send.sh …
#                                                each round also runs that other build of
#                                                herald on a database seeded the same way
#   TLS=starttls|tls bench/send.sh …             over TLS: stunnel (Debian stunnel4, with
#                                                TCP_NODELAY on both sides and a throwaway
#                                                CA) terminates TLS in front of the same
#                                                sink; the reference is then smtp-source
#                                                through a stunnel client → stunnel server
#                                                tunnel into it
#
# 1. starts Postfix's smtp-sink on a free port;
# 2. measures `smtp-source -d -s C -m N -l SIZE` into it: the local SMTP limit;
# 3. seeds N confirmed readers and a feed whose digest is about SIZE bytes, then runs
#    `herald send` with C connections into the same sink, SQLite with synchronous=FULL;
# 4. runs rss2email (PyPI) over the same articles into the same sink, as a peer;
# 5. prints the rates, herald's ratio to smtp-source and herald's peak RSS.
# With ROUNDS=R, steps 2 and 3 run R times, back to back on the same sink, each herald
# run on a fresh copy of the same seeded database: pairs measured moments apart vary
# far less than runs of the whole script, on a machine whose speed drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SIZE=${2:-20000}
C=${3:-8}
ROUNDS=${ROUNDS:-1}
PEER_N=${PEER_N:-2000}
TLS=${TLS:-none}
case $TLS in none | starttls | tls) ;; *) echo "TLS must be none, starttls or tls" >&2; exit 2 ;; esac
SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)

cargo build --release --quiet
HERALD=${CARGO_TARGET_DIR:-$PWD/target}/release/herald
WORK=$(mktemp -d /tmp/herald-bench.XXXXXX)
chmod 777 "$WORK"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SINK" -u nobody -m 512 "127.0.0.1:$PORT" 1024 &
SINK_PID=$!
trap 'kill $SINK_PID 2>/dev/null; rm -rf "$WORK"' EXIT
# Wait until the sink accepts connections (a loaded machine can take over a second).
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

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
    python3 - "$1" <<'PY'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"nothing listens on port {sys.argv[1]}")
PY
}

# Where herald sends, and where smtp-source sends: the sink itself, or over TLS a
# stunnel server in front of it (herald) and a stunnel client tunnelling into that
# server (smtp-source, which speaks no TLS).
SEND_PORT=$PORT SOURCE_PORT=$PORT TLS_SETTINGS=""
if [ "$TLS" != none ]; then
    command -v stunnel >/dev/null || { echo "stunnel is not installed: apt-get install stunnel4" >&2; exit 2; }
    (
        cd "$WORK"
        openssl req -x509 -days 2 -subj "/CN=bench CA" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -nodes -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -subj /CN=127.0.0.1 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -days 2 -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -extfile server.ext -out server.pem 2>/dev/null
    )
    SEND_PORT=$(free_port) SOURCE_PORT=$(free_port)
    PROTOCOL=""
    [ "$TLS" = starttls ] && PROTOCOL="protocol = smtp"
    cat >"$WORK/stunnel-server.conf" <<CONF
foreground = yes
pid =
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[sink]
accept = 127.0.0.1:$SEND_PORT
connect = 127.0.0.1:$PORT
cert = $WORK/server.pem
key = $WORK/server.key
$PROTOCOL
CONF
    cat >"$WORK/stunnel-client.conf" <<CONF
foreground = yes
pid =
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
[tunnel]
client = yes
accept = 127.0.0.1:$SOURCE_PORT
connect = 127.0.0.1:$SEND_PORT
CAfile = $WORK/ca.pem
verifyChain = yes
checkIP = 127.0.0.1
$PROTOCOL
CONF
    stunnel "$WORK/stunnel-server.conf" 2>"$WORK/stunnel-server.log" &
    STUNNEL_PIDS="$!"
    stunnel "$WORK/stunnel-client.conf" 2>"$WORK/stunnel-client.log" &
    STUNNEL_PIDS="$STUNNEL_PIDS $!"
    trap 'kill $SINK_PID $STUNNEL_PIDS 2>/dev/null; rm -rf "$WORK"' EXIT
    wait_port "$SEND_PORT"
    wait_port "$SOURCE_PORT"
    TLS_SETTINGS="tls = \"$TLS\"
ca_file = \"$WORK/ca.pem\""
fi

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }

# A feed whose digest is about SIZE bytes (each article adds about 2.4 KB).
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
cat > "$WORK/herald.toml" <<TOML
[database]
url = "sqlite://$WORK/herald.db"
[http]
public_url = "https://news.bench.example"
[mail]
from = "Bench News <news@bench.example>"
postal_address = "1 Bench Street, Testville"
transport = "smtp"
templates_dir = "$PWD/templates"
[smtp]
host = "127.0.0.1"
port = $SEND_PORT
connections = $C
$TLS_SETTINGS
[security]
secret = "bench"
[[regions]]
slug = "bench"
name = "Bench Town"
feeds = ["file://$WORK/feed.xml"]
TOML
export HERALD_CONFIG=$WORK/herald.toml
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
python3 -c "import sqlite3; sqlite3.connect('$WORK/herald.db').execute('PRAGMA wal_checkpoint(TRUNCATE)')"
cp "$WORK/herald.db" "$WORK/seed.db"
rm -f "$WORK"/herald.db*

BASELINE=${BASELINE:-}
# The baseline seeds its own copy: its schema may be older than this build's.
if [ -n "$BASELINE" ]; then
    "$BASELINE" ingest >/dev/null
    "$BASELINE" subscribers import "$WORK/readers.csv" --confirmed >/dev/null
    python3 -c "import sqlite3; sqlite3.connect('$WORK/herald.db').execute('PRAGMA wal_checkpoint(TRUNCATE)')"
    cp "$WORK/herald.db" "$WORK/seed-base.db"
fi

BASE_RATES=() BASE_RATIOS=()
# One `herald send` on a fresh copy of the seeded database; sets ELAPSED_RATE. The
# copy and whatever an earlier run left to write back reach the disk first, so no run
# pays for another's writes in its syncs.
herald_send() {
    rm -f "$WORK"/herald.db*
    cp "$2" "$WORK/herald.db"
    sync
    local t0 t1
    t0=$(now)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$1" send --region bench --yes >"$WORK/send.log"
    t1=$(now)
    ELAPSED_RATE=$(rate "$N" "$t0" "$t1")
}
run_herald() {
    herald_send "$HERALD" "$WORK/seed.db"
    HERALD_RATES+=("$ELAPSED_RATE")
    RATIOS+=("$(python3 -c "print(f'{${HERALD_RATES[-1]} / ${SOURCE_RATES[-1]}:.2f}')")")
    RSS_MB+=("$(python3 -c "print(round($(cat "$WORK/rss") / 1024))")")
    SENT+=("$(python3 -c "import sqlite3; print(sqlite3.connect('$WORK/herald.db').execute(\"select count(*) from deliveries where state='sent'\").fetchone()[0])")")
}
run_baseline() {
    herald_send "$BASELINE" "$WORK/seed-base.db"
    BASE_RATES+=("$ELAPSED_RATE")
    BASE_RATIOS+=("$(python3 -c "print(f'{$ELAPSED_RATE / ${SOURCE_RATES[-1]}:.2f}')")")
}

SOURCE_RATES=() HERALD_RATES=() RATIOS=() RSS_MB=() SENT=()
for round in $(seq 1 "$ROUNDS"); do
    # The local SMTP limit.
    t0=$(now)
    "$SOURCE" -d -s "$C" -m "$N" -l "$SIZE" -f bench@herald.example -t sink@bench.example "127.0.0.1:$SOURCE_PORT"
    t1=$(now)
    SOURCE_RATES+=("$(rate "$N" "$t0" "$t1")")
    # herald: plan and deliver the digest to every reader. With a baseline, the two
    # builds take turns going first.
    if [ -n "$BASELINE" ] && [ $((round % 2)) -eq 0 ]; then
        run_baseline
        run_herald
    else
        run_herald
        if [ -n "$BASELINE" ]; then run_baseline; fi
    fi
done
if [ "$TLS" = none ]; then
    REFERENCE="local SMTP limit"
else
    REFERENCE="through a stunnel client → stunnel server tunnel, $TLS"
fi
joined() { local IFS=/; echo "$*" | sed 's|/| / |g'; }
MEDIAN=$(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "${RATIOS[@]}")

# 3. A peer: rss2email sends one email per article, over SMTP into the same sink.
PEER_RATE="n/a"
if [ "$TLS" = none ] && python3 -m pip install --quiet --disable-pip-version-check rss2email >/dev/null 2>&1; then
    python3 - "$WORK/peer.xml" "$PEER_N" <<'PY'
import sys
n = int(sys.argv[2])
summary = "The council heard from residents about the riverside park. " * 20
items = "".join(f"<item><guid>p-{i}</guid><link>https://bench.example/p/{i}</link>"
                f"<title>Peer story {i}</title><description>{summary}</description></item>" for i in range(n))
open(sys.argv[1], "w").write('<?xml version="1.0"?><rss version="2.0"><channel><title>Peer</title>'
                             + items + "</channel></rss>")
PY
    export XDG_CONFIG_HOME=$WORK/r2e-config XDG_DATA_HOME=$WORK/r2e-data
    r2e new reader@bench.example >/dev/null 2>&1
    r2e add peer "file://$WORK/peer.xml" >/dev/null 2>&1
    sed -i -e 's/^email-protocol = .*/email-protocol = smtp/' \
        -e "s/^smtp-server = .*/smtp-server = 127.0.0.1:$PORT/" \
        -e 's/^smtp-ssl = .*/smtp-ssl = False/' -e 's/^smtp-auth = .*/smtp-auth = False/' \
        "$WORK/r2e-config/rss2email.cfg"
    t0=$(now)
    r2e run peer >/dev/null 2>&1
    t1=$(now)
    PEER_RATE=$(rate "$PEER_N" "$t0" "$t1")
fi

cat <<REPORT
messages: $N  connections: $C  message size: smtp-source $SIZE B, herald digest $DIGEST_BYTES B  TLS: $TLS
smtp-source ($REFERENCE): $(joined "${SOURCE_RATES[@]}") msg/s
herald send (plan + deliver, SQLite synchronous=FULL): $(joined "${HERALD_RATES[@]}") msg/s, $(joined "${SENT[@]}") rows sent
ratio herald / smtp-source: $(joined "${RATIOS[@]}") (median $MEDIAN)
herald peak RSS: $(joined "${RSS_MB[@]}") MB
rss2email (peer, $PEER_N emails): $PEER_RATE emails/s
REPORT
if [ -n "$BASELINE" ]; then
    BASE_MEDIAN=$(python3 -c "import statistics, sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "${BASE_RATIOS[@]}")
    echo "baseline $BASELINE: $(joined "${BASE_RATES[@]}") msg/s, ratio $(joined "${BASE_RATIOS[@]}") (median $BASE_MEDIAN)"
fi
