#!/usr/bin/env bash
# WebSocket passthrough under load (issue 14): message frames per second
# through moltgate's `platform: websocket, mode: passthrough` route, against
# the same client talking to the same upstream directly, and through nginx.
#
#   direct    client -> upstream, plain ws:// (no proxy, no TLS)
#   nginx     client -> nginx (wss://, TLS 1.3) -> upstream ws://: a
#             TLS-terminating WebSocket proxy that inspects nothing (proxy_pass
#             with the Upgrade headers); one access-log line per connection
#   moltgate  client -> moltgate (wss://, TLS 1.3) -> upstream ws://: JWT at the
#             upgrade, then every text frame parsed both ways (profile
#             openclaw); each chat.send goes through the message path (the
#             token again, identity, rate limits, ABAC + RBAC, DLP) and
#             writes one audit line; every upstream frame goes through egress
#             DLP (the chat event's text through the streaming masker)
#
# The direct side is plaintext: moltgate/direct is what putting moltgate in
# front costs in all, TLS included. moltgate/nginx, with the same TLS 1.3
# listener, certificate and client, is what the inspection costs beyond a
# plain TLS WebSocket proxy.
#
# The upstream and the client are `benches/ws_load.rs` (built with `cargo
# bench --bench ws_load --no-run`). The upstream is a minimal OpenClaw-shaped
# gateway (tokio-tungstenite, plain ws, no permessage-deflate): every `req`
# frame gets a `res` (ok: true, echoing the text) and one `chat` delta event
# carrying the text back, written together. The client opens CONNECTIONS
# connections, each a closed loop: a `chat.send` req with a unique id and text,
# then wait for its res and its event. It counts a frame only when the res is
# ok and echoes the exact text and the event carries the exact text back;
# refusals (ok: false, an error frame) and errors (close, timeout) are
# counted apart, never as throughput.
#
# Method (each rule fails the run, or warns loudly, when it does not hold):
#   - every frame is a new message: a unique id and text per frame, from a new
#     random base per client run (digit runs under 11 digits: no DLP number
#     pattern matches);
#   - every counted answer came from the upstream unchanged: a wrong or
#     altered answer ("mismatched") fails the run; refusals and errors are
#     printed per side and round with a WARNING;
#   - moltgate's own counters, read before and after each timed run
#     (moltgate_websocket_frames_total, moltgate_requests_total,
#     moltgate_dlp_findings_total): a refused or masked frame, a DLP
#     finding, or fewer forwarded frames than the client got answers for,
#     warns;
#   - the same certificate, TLS 1.3 only on both proxies (the negotiated
#     cipher is printed), the same client, connection count and frames; the
#     shipped policies/ with every stage on (rate limits out of reach).
#
# Environment (defaults in brackets):
#   SIDES        which sides, in order within a round ["direct nginx moltgate"]
#   DURATION     seconds measured per side and round               [10]
#   WARMUP       seconds of unmeasured load before (same connections) [2]
#   CONNECTIONS  concurrent WebSocket connections                   [32]
#   ROUNDS       rounds; each runs every side once                  [3]
#   WORKERS      moltgate `threads` and nginx worker_processes      [nproc]
#   UP_WORKERS   the upstream's tokio worker threads                [1]
#   CLIENT_THREADS the client's tokio worker threads                [1]
#   MAX_FRAMES   frames one client run may send (warm-up included)  [5000000]
#   EVENTS       the upstream's chat events per request: delta,final (OpenClaw's
#                shape of a one-piece answer), final, or delta (the run stays
#                open: moltgate's streaming masker holds the tail; direct/nginx only) [delta,final]
#   MOLTGATE_BIN the binary [target/release/moltgate, built if missing]
#   WS_LOAD_BIN  the ws_load bench binary [built with cargo bench --no-run]
#   KEEP=1       keep the temp dir (configs, logs, client output)
#
# Everything listens on 127.0.0.1 only, on free high ports; every process the
# script starts is killed by pid on exit; all files live in one temp dir; each
# client run is bounded (its own duration and frame cap, and `timeout` 30 s
# past them). A default run takes about 2 minutes:
# ROUNDS * sides * (DURATION + WARMUP) plus setup.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 2)}
UP_WORKERS=${UP_WORKERS:-1}
CLIENT_THREADS=${CLIENT_THREADS:-1}
MAX_FRAMES=${MAX_FRAMES:-5000000}
EVENTS=${EVENTS:-delta,final}
SIDES=${SIDES:-direct nginx moltgate}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${MOLTGATE_BIN:-$ROOT/target/release/moltgate}

say() { printf '%s\n' "$*" >&2; }
die() { say "ws.sh: $*"; exit 1; }

for v in DURATION WARMUP CONNECTIONS ROUNDS WORKERS UP_WORKERS CLIENT_THREADS MAX_FRAMES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
(( DURATION >= 1 && DURATION <= 600 )) || die "DURATION must be 1..600 seconds"
(( WARMUP <= 600 )) || die "WARMUP must be 0..600 seconds"
(( ROUNDS >= 1 && ROUNDS <= 10 )) || die "ROUNDS must be 1..10"
(( CONNECTIONS >= 1 && CONNECTIONS <= 10000 )) || die "CONNECTIONS must be 1..10000"
(( WORKERS >= 1 && UP_WORKERS >= 1 && UP_WORKERS <= 64 && CLIENT_THREADS >= 1 && CLIENT_THREADS <= 64 )) \
    || die "WORKERS, UP_WORKERS and CLIENT_THREADS must be at least 1 (the last two at most 64)"
(( MAX_FRAMES >= 1 && MAX_FRAMES <= 50000000 )) || die "MAX_FRAMES must be 1..50000000"
read -r -a SIDE_LIST <<<"$SIDES"
(( ${#SIDE_LIST[@]} >= 1 )) || die "SIDES is empty"
seen=" "
for s in "${SIDE_LIST[@]}"; do
    case "$s" in direct|nginx|moltgate) ;; *) die "SIDES: unknown side '$s' (direct, nginx, moltgate)";; esac
    [[ $seen == *" $s "* ]] && die "SIDES: '$s' twice"
    seen+="$s "
done
has_side() { [[ $seen == *" $1 "* ]]; }
case "$EVENTS" in
    delta,final|final) ;;
    delta) if has_side moltgate; then
               say "note: EVENTS=delta leaves every run open: moltgate holds back the text's tail (streaming-safe egress), so its answers will not match"
           fi ;;
    *) die "EVENTS must be delta,final, final or delta" ;;
esac
EGRESS_PER_ANSWER=$(( 1 + $(tr ',' '\n' <<<"$EVENTS" | wc -l) ))   # the res and the chat events

# ---------------------------------------------------------------- tools
SUDO=
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
need() { # need CMD PACKAGE: apt-get install PACKAGE if CMD is missing (update only if that fails)
    local cmd=$1 pkg=$2
    if command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]]; then return 0; fi
    say "== installing $pkg (for $cmd)"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2; then
        $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2 \
            || die "cannot install $pkg; install it and rerun"
    fi
}
need curl curl
need openssl openssl
need jq jq
has_side nginx && need nginx nginx
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

if has_side moltgate || has_side nginx; then
    if [[ ! -x $BIN ]]; then
        say "== $BIN missing: cargo build --release (a few minutes)"
        (cd "$ROOT" && cargo build --release >&2)
    fi
    [[ -x $BIN ]] || die "no moltgate binary at $BIN"
fi
WS_LOAD=${WS_LOAD_BIN:-}
if [[ -z $WS_LOAD ]]; then
    say "== cargo bench --bench ws_load --no-run (the client and upstream)"
    WS_LOAD=$(cd "$ROOT" && cargo bench --bench ws_load --no-run --message-format=json-render-diagnostics \
        | jq -r 'select(.reason == "compiler-artifact" and .target.name == "ws_load") | .executable // empty' | tail -1)
fi
[[ -n $WS_LOAD && -x $WS_LOAD ]] || die "no ws_load binary (WS_LOAD_BIN='${WS_LOAD_BIN:-}', built '$WS_LOAD')"

# ---------------------------------------------------------------- temp dir, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moltgate-ws.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- ports
TAKEN=" "
PORT=
pick_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        [[ $TAKEN == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            TAKEN+="$p "; PORT=$p; return 0
        fi
    done
    die "no free port found"
}
pick_port; UP_PORT=$PORT
pick_port; MG_PUBLIC=$PORT
pick_port; MG_ADMIN=$PORT
pick_port; NG_PUBLIC=$PORT

wait_port() { # wait_port PORT WHAT PID
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited while starting; see its log in $WORK (rerun with KEEP=1)"
        sleep 0.1
    done
    die "$2 did not listen on 127.0.0.1:$1 within 15 s"
}

# ---------------------------------------------------------------- the upstream
"$WS_LOAD" upstream --port "$UP_PORT" --workers "$UP_WORKERS" --events "$EVENTS" \
    >"$WORK/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_port "$UP_PORT" "ws_load upstream" "$UP_PID"

# ---------------------------------------------------------------- certificates, policies
CA=
MG_PID= NG_PID= TOKEN=
if has_side moltgate || has_side nginx; then
    "$BIN" certs dev "$WORK/certs" >/dev/null
    CERT=$WORK/certs/server.crt KEY=$WORK/certs/server.key CA=$WORK/certs/ca.crt
fi

if has_side moltgate; then
    # The shipped policies (ABAC, RBAC, identities, DLP ingress and egress all
    # run), with security_policy.yaml replaced as in run.sh: the same checks,
    # but rate limits (still evaluated, per frame) too high to ever trigger,
    # the loopback whitelisted, and a known JWT secret.
    mkdir -p "$WORK/policies"
    cp "$ROOT"/policies/*.yaml "$WORK/policies/"
    cat >"$WORK/policies/security_policy.yaml" <<'EOF'
rate_limiting:
  global:   { window: 60s, max_requests: 1000000000 }
  per_ip:   { window: 30s, max_requests: 1000000000 }
  per_user: { window: 60s, max_requests: 1000000000 }
ip_whitelist: [127.0.0.0/8, "::1/128"]
jwt_validation:
  issuer: "auth.example.com"
  audiences: ["moltbot.api"]
  leeway: 60
  algorithms: [HS256]
  secret: "load-bench-secret-0123456789abcdef"
EOF
    # The shipped abac.yaml lets loopback forward on /v1/messages and
    # /hooks/**, not on /openclaw: every rule that names /v1/messages names
    # /openclaw too, in this temp copy only.
    ABAC_GRANT='every abac.yaml rule naming "/v1/messages" also names "/openclaw" (bench temp copy only)'
    sed -i 's|"/v1/messages"|"/v1/messages", "/openclaw"|g' "$WORK/policies/abac.yaml"
    grep -q '"/openclaw"' "$WORK/policies/abac.yaml" \
        || die "policies/abac.yaml names no \"/v1/messages\" resource any more: update the /openclaw grant in ws.sh"

    cat >"$WORK/moltgate.yaml" <<EOF
listen:
  public:
    address: "127.0.0.1:$MG_PUBLIC"
    tls: { cert: certs/server.crt, key: certs/server.key }
  admin: { address: "127.0.0.1:$MG_ADMIN" }
policies: policies/
upstreams:
  openclaw: { kind: http, nodes: ["127.0.0.1:$UP_PORT"], timeout: 10s }
routes:
  - { path: /openclaw, platform: websocket, mode: passthrough, upstream: openclaw,
      websocket: { profile: openclaw, max_frame: 65536 } }
threads: $WORKERS
log: { format: json, level: info }
EOF
    "$BIN" check -c "$WORK/moltgate.yaml" >"$WORK/check.out" 2>&1 \
        || { cat "$WORK/check.out" >&2; die "moltgate check failed on $WORK/moltgate.yaml (does this build support platform: websocket, mode: passthrough?)"; }
    # The audit lines (one per message frame) go to a file.
    (cd "$WORK" && exec "$BIN" run -c "$WORK/moltgate.yaml") >"$WORK/moltgate.log" 2>&1 &
    MG_PID=$!; PIDS+=("$MG_PID")
    wait_port "$MG_PUBLIC" "moltgate run" "$MG_PID"
    for i in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MG_ADMIN/readyz" || true) == 200 ]] && break
        (( i == 100 )) && die "moltgate not ready (/readyz) within 20 s; see $WORK/moltgate.log (KEEP=1)"
        sleep 0.2
    done
    TOKEN=$("$BIN" token -c "$WORK/moltgate.yaml" --sub bench-user --claim roles=user --claim tenant=acme --ttl 2h)
fi

if has_side nginx; then
    mkdir -p "$WORK/nginx-tmp"
    cat >"$WORK/nginx.conf" <<EOF
# The nginx reference of benches/load/ws.sh: a TLS 1.3 WebSocket proxy, the
# same certificate as moltgate, in front of the same upstream. It inspects
# nothing; one access-log line per connection.
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/nginx-access.log;
    client_body_temp_path $WORK/nginx-tmp/client_body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    server_tokens off;
    server {
        listen 127.0.0.1:$NG_PUBLIC ssl;
        ssl_certificate     $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.3;
        location = /openclaw {
            proxy_pass http://127.0.0.1:$UP_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }
        location / { return 404; }
    }
}
EOF
    "$NGINX" -t -q -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >&2 \
        || die "nginx -t failed on $WORK/nginx.conf (KEEP=1)"
    "$NGINX" -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
    NG_PID=$!; PIDS+=("$NG_PID")
    wait_port "$NG_PUBLIC" "nginx" "$NG_PID"
fi

# ---------------------------------------------------------------- measuring
tls_of() { # the negotiated protocol and cipher; and whether TLS 1.2 is refused
    local p t12
    p=$(openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null \
        | sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is \(.*\)/\1 \2/p' | head -1)
    if openssl s_client -connect "127.0.0.1:$1" -tls1_2 </dev/null >/dev/null 2>&1; then t12="TLS 1.2 ACCEPTED"; else t12="TLS 1.2 refused"; fi
    printf '%s; %s' "${p:-unknown}" "$t12"
}
# CPU (user+system clock ticks, all threads) of processes and their direct children.
cpu_ticks() {
    local total=0 pid rest
    for pid in "$@" $(ps -o pid= --ppid "$(IFS=,; echo "$*")" 2>/dev/null); do
        [[ -r /proc/$pid/stat ]] || continue
        rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $rest
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
# Busy clock ticks of the whole machine (every CPU: user, nice, system, irq,
# softirq, steal), to tell how much CPU other processes took during a run.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# moltgate's counters for the route, as "name=value" words:
#   in_forwarded in_masked in_refused eg_forwarded eg_masked eg_held (websocket_frames_total),
#   req_<outcome> (requests_total), dlp (dlp_findings_total), upgraded (websocket_connections_total)
counters() {
    curl -s --max-time 5 "http://127.0.0.1:$MG_ADMIN/metrics" | awk '
        function label(name,   re) { re = name "=\"[^\"]*\""; if (match($0, re)) return substr($0, RSTART + length(name) + 2, RLENGTH - length(name) - 3); return "" }
        /^moltgate_websocket_frames_total\{/ && label("route") == "/openclaw" {
            d = label("direction") == "ingress" ? "in" : "eg"; c[d "_" label("verdict")] += $NF }
        /^moltgate_requests_total\{/ && label("route") == "/openclaw" { c["req_" label("outcome")] += $NF }
        /^moltgate_dlp_findings_total\{/ { c["dlp"] += $NF }
        /^moltgate_websocket_connections_total\{/ && label("route") == "/openclaw" { c["conn_" label("result")] += $NF }
        END { for (k in c) printf "%s=%d ", k, c[k] }'
}
# AFTER - BEFORE of two counters() strings, as "name=delta" words (non-zero only)
delta() {
    awk -v b="$1" -v a="$2" 'BEGIN {
        n = split(b, bs, " "); for (i = 1; i <= n; i++) { split(bs[i], kv, "="); before[kv[1]] = kv[2] }
        n = split(a, as, " ")
        for (i = 1; i <= n; i++) { split(as[i], kv, "="); d = kv[2] - before[kv[1]]; if (d != 0) printf "%s=%d ", kv[1], d } }'
}
get() { # get "WORDS" NAME: the value of NAME in a delta()/counters() string, 0 if absent
    local w
    for w in $1; do [[ ${w%%=*} == "$2" ]] && { echo "${w#*=}"; return; }; done
    echo 0
}

declare -A R=()   # R[side:round:metric]
declare -A URL_OF=([direct]="ws://127.0.0.1:$UP_PORT/openclaw" [nginx]="wss://127.0.0.1:$NG_PUBLIC/openclaw" [moltgate]="wss://127.0.0.1:$MG_PUBLIC/openclaw")
declare -A PROXY_PID=([direct]= [nginx]=$NG_PID [moltgate]=$MG_PID)
CLIENT_PID=
WARNINGS=0

measure() { # measure SIDE ROUND
    local side=$1 round=$2 url=${URL_OF[$1]} out="$WORK/$1.$2.json"
    local args=(--url "$url" --connections "$CONNECTIONS" --duration "$DURATION" --warmup "$WARMUP"
        --max-frames "$MAX_FRAMES" --threads "$CLIENT_THREADS" --timeout 5 --events "$EVENTS")
    [[ $side != direct ]] && args+=(--ca "$CA")
    [[ $side == moltgate ]] && args+=(--token "$TOKEN")
    local before= proxy_before=0 up_before rc=0
    [[ $side == moltgate ]] && before=$(counters)
    [[ -n ${PROXY_PID[$side]} ]] && proxy_before=$(cpu_ticks "${PROXY_PID[$side]}")
    up_before=$(cpu_ticks "$UP_PID")
    local busy_before; busy_before=$(busy_ticks)
    local started; started=$(date +%s%N)
    timeout $(( DURATION + WARMUP + 30 )) "$WS_LOAD" client "${args[@]}" >"$out" 2>"$WORK/$side.$round.err" || rc=$?
    (( rc == 0 )) || { cat "$WORK/$side.$round.err" >&2; die "$side round $round: the client failed or timed out (exit $rc)"; }
    local proxy_after=0 up_after
    [[ -n ${PROXY_PID[$side]} ]] && proxy_after=$(cpu_ticks "${PROXY_PID[$side]}")
    up_after=$(cpu_ticks "$UP_PID")
    local busy_after; busy_after=$(busy_ticks)
    local elapsed; elapsed=$(awk -v a="$(date +%s%N)" -v b="$started" 'BEGIN { printf "%.3f", (a - b) / 1e9 }')

    local j; j=$(<"$out")
    jq -e . >/dev/null <<<"$j" || { cat "$out" "$WORK/$side.$round.err" >&2; die "$side round $round: no JSON from the client"; }
    local fps frames p50 p99 refused errors mismatched checked reasons connected
    fps=$(jq -r .frames_per_s <<<"$j"); frames=$(jq -r .frames <<<"$j")
    p50=$(jq -r .p50_ms <<<"$j"); p99=$(jq -r .p99_ms <<<"$j")
    refused=$(jq -r .refused <<<"$j"); errors=$(jq -r .errors <<<"$j")
    mismatched=$(jq -r .mismatched <<<"$j"); checked=$(jq -r .checked <<<"$j")
    connected=$(jq -r .connected <<<"$j"); reasons=$(jq -c .reasons <<<"$j")
    (( frames > 0 )) || die "$side round $round: no frame answered ($(jq -c . <<<"$j"))"
    (( mismatched == 0 )) || die "$side round $round: $mismatched answers were not the upstream's exact echo of the frame sent: $reasons"
    [[ $(jq -r .capped <<<"$j") == true ]] && say "note: $side round $round: MAX_FRAMES ($MAX_FRAMES) reached; the window is $(jq -r .window_s <<<"$j") s"

    local proxy_us=- up_us cl_us
    if [[ -n ${PROXY_PID[$side]} ]]; then
        proxy_us=$(awk -v t=$(( proxy_after - proxy_before )) -v hz="$HZ" -v n="$checked" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    fi
    up_us=$(awk -v t=$(( up_after - up_before )) -v hz="$HZ" -v n="$checked" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    cl_us=$(jq -r --argjson n "$checked" '.cpu_s * 1e6 / $n | round' <<<"$j")
    # What the rest of the machine took meanwhile: busy ticks minus the
    # proxy's, the upstream's and the client's, as a share of one CPU.
    local other
    other=$(awk -v b=$(( busy_after - busy_before )) -v p=$(( proxy_after - proxy_before )) -v u=$(( up_after - up_before )) \
        -v c="$(jq -r .cpu_s <<<"$j")" -v hz="$HZ" -v s="$elapsed" \
        'BEGIN { o = (b - p - u) / hz - c; if (o < 0) o = 0; printf "%.0f", (s > 0 ? o / s * 100 : 0) }')
    R[$side:$round:other]=$other
    R[$side:$round:fps]=$fps; R[$side:$round:p50]=$p50; R[$side:$round:p99]=$p99
    fps=$(printf '%.0f' "$fps")
    R[$side:$round:cpu]=$proxy_us; R[$side:$round:bad]=$(( refused + errors ))
    printf '%-8s round %d: %9s frames/s  p50 %7s ms  p99 %7s ms  refused %d  errors %d  CPU/frame proxy %4s us [upstream %s, client %s us/frame, on neither side]  other processes %s%% of a CPU\n' \
        "$side" "$round" "$fps" "$p50" "$p99" "$refused" "$errors" "$proxy_us" "$up_us" "$cl_us" "$other"
    if (( other > 15 )); then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: $side round $round: other processes took $other% of a CPU during the run: its frames/s is not comparable"
    fi
    if (( refused + errors > 0 || connected < CONNECTIONS )); then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: $side round $round: $refused refused, $errors errors, $connected/$CONNECTIONS connected: $reasons"
    fi
    if [[ $side == moltgate ]]; then
        local d; d=$(delta "$before" "$(counters)")
        local in_fwd in_masked in_refused eg_fwd eg_masked dlp proxied
        in_fwd=$(get "$d" in_forwarded); in_masked=$(get "$d" in_masked); in_refused=$(get "$d" in_refused)
        eg_fwd=$(get "$d" eg_forwarded); eg_masked=$(( $(get "$d" eg_masked) + $(get "$d" eg_held) )); dlp=$(get "$d" dlp)
        proxied=$(get "$d" req_proxied)
        printf '%-8s round %d: moltgate counted frames in: %d forwarded, %d masked, %d refused (%d proxied); out: %d as received, %d rewritten; %d DLP findings (client: %d answered)\n' \
            "$side" "$round" "$in_fwd" "$in_masked" "$in_refused" "$proxied" "$eg_fwd" "$eg_masked" "$dlp" "$checked"
        R[$side:$round:refused_frames]=$in_refused
        # Egress rewritten = "masked" (a finding) + "held": a delta whose tail
        # the streaming masker held until the final (the text's last
        # characters could still start a match), with no finding. Only findings,
        # and ingress masks or refusals, mean the frames were not clean.
        if (( in_refused > 0 || in_masked > 0 || dlp > 0 )); then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: moltgate round $round: frames refused or masked, or DLP findings ($d): the frames should be clean"
        fi
        if (( in_fwd < checked || eg_fwd + eg_masked < EGRESS_PER_ANSWER * checked )); then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: moltgate round $round: fewer frames forwarded (in $in_fwd, out $eg_fwd + $eg_masked) than the client got answers for ($checked, $EGRESS_PER_ANSWER frames back each)"
        fi
        local other; other=$(tr ' ' '\n' <<<"$d" | grep '^req_' | grep -v '^req_proxied=' | tr '\n' ' ' || true)
        if [[ -n ${other// /} ]]; then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: moltgate round $round: message frames with another outcome than proxied: $other"
        fi
    fi
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ---------------------------------------------------------------- header
echo "== WebSocket passthrough load: sides ${SIDE_LIST[*]} ($(nproc) CPUs shared by the client, the proxies and the upstream)"
[[ -n $MG_PID ]] && echo "moltgate $("$BIN" --version 2>/dev/null | awk '{print $2}') ($BIN), threads: $WORKERS; TLS: $(tls_of "$MG_PUBLIC")"
[[ -n $NG_PID ]] && echo "nginx $("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p'), worker_processes: $WORKERS; TLS: $(tls_of "$NG_PUBLIC")"
echo "upstream: ws_load upstream (1 process, $UP_WORKERS tokio worker(s)), ws://127.0.0.1:$UP_PORT: a res + chat events ($EVENTS) per chat.send, one flush"
echo "client: ws_load client ($CLIENT_THREADS tokio worker(s)), $CONNECTIONS connections, closed loop, ${DURATION}s measured after ${WARMUP}s warm-up per side and round, $ROUNDS round(s)"
[[ -n $MG_PID ]] && echo "moltgate route: /openclaw, platform websocket, mode passthrough, profile openclaw, max_frame 65536; shipped policies/ (rate limits out of reach); ABAC grant: $ABAC_GRANT"
echo "the direct side is plaintext ws://; nginx and moltgate terminate TLS 1.3 (same certificate)"
echo "commands:"
echo "  upstream: $WS_LOAD upstream --port $UP_PORT --workers $UP_WORKERS --events $EVENTS"
[[ -n $MG_PID ]] && echo "  moltgate: $BIN run -c $WORK/moltgate.yaml"
[[ -n $NG_PID ]] && echo "  nginx:    $NGINX -p $WORK -c $WORK/nginx.conf"
echo "  client:   $WS_LOAD client --url <side's url> --connections $CONNECTIONS --duration $DURATION --warmup $WARMUP --max-frames $MAX_FRAMES --threads $CLIENT_THREADS --events $EVENTS [--ca $CA] [--token JWT]"

# ---------------------------------------------------------------- rounds
for ROUND in $(seq "$ROUNDS"); do
    for side in "${SIDE_LIST[@]}"; do measure "$side" "$ROUND"; done
done

# ---------------------------------------------------------------- summary
echo "== summary (medians over $ROUNDS round(s))"
for side in "${SIDE_LIST[@]}"; do
    f=() p5=() p9=() c=() bad=0
    for ROUND in $(seq "$ROUNDS"); do
        f+=("${R[$side:$ROUND:fps]}"); p5+=("${R[$side:$ROUND:p50]}"); p9+=("${R[$side:$ROUND:p99]}")
        c+=("${R[$side:$ROUND:cpu]}"); bad=$(( bad + ${R[$side:$ROUND:bad]} ))
    done
    cpu=-; [[ ${c[0]} != - ]] && cpu="$(printf '%.0f' "$(median "${c[@]}")") us"
    printf '%-8s: %9.0f frames/s  p50 %7.3f ms  p99 %7.3f ms  proxy CPU/frame %s  refused+errors %d\n' \
        "$side" "$(median "${f[@]}")" "$(median "${p5[@]}")" "$(median "${p9[@]}")" "$cpu" "$bad"
done
ratio() { # ratio A B: the median over rounds of A's frames/s / B's
    local r=() q=()
    for ROUND in $(seq "$ROUNDS"); do
        r+=("$(awk -v a="${R[$1:$ROUND:fps]}" -v b="${R[$2:$ROUND:fps]}" 'BEGIN { print a / b }')")
        q+=("$(awk -v a="${R[$1:$ROUND:p99]}" -v b="${R[$2:$ROUND:p99]}" 'BEGIN { print (b > 0 ? a / b : 0) }')")
    done
    printf 'throughput %s/%s %.2f (median of %d per-round ratios), p99 ratio %.2f\n' "$1" "$2" "$(median "${r[@]}")" "$ROUNDS" "$(median "${q[@]}")"
}
has_side moltgate && has_side direct && ratio moltgate direct
has_side moltgate && has_side nginx && ratio moltgate nginx
has_side nginx && has_side direct && ratio nginx direct
noisy=0
for side in "${SIDE_LIST[@]}"; do for ROUND in $(seq "$ROUNDS"); do
    (( ${R[$side:$ROUND:other]} > noisy )) && noisy=${R[$side:$ROUND:other]}
done; done
echo "other processes: at most $noisy% of a CPU during a timed run (above 15% warns: rerun on a quiet machine)"
if has_side moltgate; then
    total=0; for ROUND in $(seq "$ROUNDS"); do total=$(( total + ${R[moltgate:$ROUND:refused_frames]} )); done
    echo "moltgate refused frames over the timed runs: $total (moltgate_websocket_frames_total{direction=\"ingress\",verdict=\"refused\"})"
    failures=$(curl -s --max-time 5 "http://127.0.0.1:$MG_ADMIN/metrics" \
        | awk '/^moltgate_websocket_connections_total\{/ && !/result="upgraded"/ && $NF > 0 { sub(/^moltgate_websocket_connections_total/, ""); printf "%s%s", sep, $0; sep = ", " }')
    if [[ -n $failures ]]; then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: moltgate counted upgrades that did not succeed over the whole run: $failures"
    fi
fi
if (( WARNINGS > 0 )); then
    say "WARNING: $WARNINGS warning(s) above: refusals, errors, or frames moltgate did not forward clean; the figures include them"
fi
