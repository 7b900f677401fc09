#!/usr/bin/env bash
# moltgate vs nginx, side by side, on this machine: TLS 1.3 on loopback in
# front of an upstream, the same HTTP request, bounded load. Prints req/s,
# latency percentiles, CPU per request, and the throughput ratio.
#
#   moltgate: TLS 1.3 + HS256 JWT verify + JSON parse + Envelope + protobuf +
#             gRPC (h2c) to a separate `moltgate assistant` process + JSON reply
#   nginx:    TLS 1.3 + proxy_pass over HTTP/1.1 keepalive to an nginx
#             `return 200 '<the same JSON reply>'` server block
#
# Environment (defaults in brackets):
#   DURATION     seconds of measured load per side and round   [10]
#   WARMUP       seconds of unmeasured load before each run    [2]
#   CONNECTIONS  concurrent connections                        [32]
#   THREADS      load-tool threads                             [2]
#   WORKERS      moltgate `threads` and nginx worker_processes [nproc]
#   ROUNDS       rounds (nginx then moltgate each round)       [1]
#   TOOL         wrk (HTTP/1.1, p50/p99) or h2load             [wrk]
#   H2LOAD_PROTO h2 or h1 when TOOL=h2load                     [h2]
#   UPSTREAM     external (separate assistant process) or embedded [external]
#   CONVERSATIONS distinct conversations the wrk requests cycle through [1000]
#                (h2load sends one body, so one conversation)
#   MOLTGATE_BIN the binary [target/release/moltgate, built if missing]
#   KEEP=1       keep the temp dir (configs, logs) for inspection
#
# Everything listens on 127.0.0.1 only, on free high ports; every process the
# script starts is killed by pid on exit; all files live in one temp dir.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 2)}
ROUNDS=${ROUNDS:-1}
TOOL=${TOOL:-wrk}
H2LOAD_PROTO=${H2LOAD_PROTO:-h2}
UPSTREAM=${UPSTREAM:-external}
CONVERSATIONS=${CONVERSATIONS:-1000}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${MOLTGATE_BIN:-$ROOT/target/release/moltgate}

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

case "$TOOL" in wrk|h2load) ;; *) die "TOOL must be wrk or h2load, not '$TOOL'";; esac
case "$UPSTREAM" in external|embedded) ;; *) die "UPSTREAM must be external or embedded, not '$UPSTREAM'";; esac
case "$H2LOAD_PROTO" in h2|h1) ;; *) die "H2LOAD_PROTO must be h2 or h1";; esac
for v in DURATION WARMUP CONNECTIONS THREADS WORKERS ROUNDS CONVERSATIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
(( DURATION >= 1 && DURATION <= 600 )) || die "DURATION must be 1..600 seconds"
(( ROUNDS >= 1 && ROUNDS <= 10 )) || die "ROUNDS must be 1..10"
(( CONVERSATIONS >= 1 && CONVERSATIONS <= 100000 )) || die "CONVERSATIONS must be 1..100000"

# ---------------------------------------------------------------- tools
SUDO=
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi

# need CMD PACKAGE: install the Debian package if CMD is missing; apt-get
# update only if the plain install fails.
need() {
    local cmd=$1 pkg=$2
    if command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]]; then return 0; fi
    say "== installing $pkg (for $cmd)"
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2; then
        $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >&2 \
            || die "cannot install $pkg; install it and rerun"
    fi
}
need nginx nginx
need curl curl
need openssl openssl
if [[ $TOOL == wrk ]]; then need wrk wrk; else need h2load nghttp2-client; fi
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

if [[ ! -x $BIN ]]; then
    say "== $BIN missing: cargo build --release (a few minutes)"
    (cd "$ROOT" && cargo build --release >&2)
fi
[[ -x $BIN ]] || die "no moltgate binary at $BIN"

# ---------------------------------------------------------------- temp dir, cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/moltgate-load.XXXXXX")
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done  # fast stop (moltgate, nginx, assistant)
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
pick_port; MG_PUBLIC=$PORT
pick_port; MG_ADMIN=$PORT
pick_port; ASSISTANT=$PORT
pick_port; NG_PUBLIC=$PORT
pick_port; NG_ECHO=$PORT

wait_port() { # wait_port PORT WHAT PID
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited while starting; see its log in $WORK (rerun with KEEP=1)"
        sleep 0.1
    done
    die "$2 did not listen on 127.0.0.1:$1 within 15 s"
}

# ---------------------------------------------------------------- shared fixtures
"$BIN" certs dev "$WORK/certs" >/dev/null
CERT=$WORK/certs/server.crt KEY=$WORK/certs/server.key CA=$WORK/certs/ca.crt

# The shipped policies (ABAC, RBAC, identities, DLP ingress and egress all
# run), with security_policy.yaml replaced: the same checks, but rate limits
# too high to ever trigger, the loopback whitelisted, and a known JWT secret.
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

if [[ $UPSTREAM == external ]]; then NODES="\"127.0.0.1:$ASSISTANT\""; else NODES=embedded; fi
cat >"$WORK/moltgate.yaml" <<EOF
listen:
  public:
    address: "127.0.0.1:$MG_PUBLIC"
    tls: { cert: certs/server.crt, key: certs/server.key }
  admin: { address: "127.0.0.1:$MG_ADMIN" }
policies: policies/
upstreams:
  assistant: { kind: grpc, nodes: [$NODES], balance: conversation, timeout: 30s }
routes:
  - { path: /v1/messages, platform: generic, upstream: assistant }
threads: $WORKERS
log: { format: json, level: info }
EOF
"$BIN" check -c "$WORK/moltgate.yaml" >&2

TOKEN=$("$BIN" token -c "$WORK/moltgate.yaml" --sub bench-user --claim roles=user --claim tenant=acme --ttl 2h)
# A typical generic-API message (no ' \ or $, so it can be inlined below).
BODY='{"platform":"web","sender":{"id":"u-1842","name":"Alice Martin"},"content":{"text":"Hi! Can you summarise the incident report and list the follow-up actions for the on-call team?"},"timestamp":1732190000,"context":{"room_id":"ops-room","thread_id":"t-1","chat_type":"group"}}'
printf '%s' "$BODY" >"$WORK/body.json"

# ---------------------------------------------------------------- moltgate
if [[ $UPSTREAM == external ]]; then
    "$BIN" assistant --listen "127.0.0.1:$ASSISTANT" >"$WORK/assistant.log" 2>&1 &
    ASSISTANT_PID=$!; PIDS+=("$ASSISTANT_PID")
    wait_port "$ASSISTANT" "moltgate assistant" "$ASSISTANT_PID"
fi
# The audit line (one JSON line per request) goes to a file, like nginx's access log.
(cd "$WORK" && exec "$BIN" run -c "$WORK/moltgate.yaml") >"$WORK/moltgate.log" 2>&1 &
MG_PID=$!; PIDS+=("$MG_PID")
wait_port "$MG_PUBLIC" "moltgate run" "$MG_PID"
for i in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MG_ADMIN/readyz" || true) == 200 ]] && break
    (( i == 100 )) && die "moltgate not ready (/readyz) within 20 s; see $WORK/moltgate.log (KEEP=1)"
    sleep 0.2
done

request() { # request PORT: prints the HTTP status, then the body
    curl -sS --max-time 5 --tlsv1.3 --cacert "$CA" -o "$WORK/resp" -w '%{http_code}' \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary @"$WORK/body.json" "https://127.0.0.1:$1/v1/messages" || true
}
status=$(request "$MG_PUBLIC")
REPLY=$(cat "$WORK/resp" 2>/dev/null || true)
[[ $status == 200 ]] || die "moltgate sanity request: HTTP $status: $REPLY"
case "$REPLY" in *\'*|*\\*|*\$*) die "moltgate's reply has a quote, backslash or \$; cannot inline it in nginx.conf";; esac

# ---------------------------------------------------------------- nginx
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if printf '%s\n%s\n' 1.25.1 "$NGINX_VERSION" | sort -V -C; then
    LISTEN_HTTP2=; HTTP2_ON="http2 on;"          # nginx >= 1.25.1
else
    LISTEN_HTTP2=" http2"; HTTP2_ON=
fi
mkdir -p "$WORK/nginx-tmp"
sed -e "s|@WORK@|$WORK|g" -e "s|@WORKERS@|$WORKERS|g" \
    -e "s|@PUBLIC_PORT@|$NG_PUBLIC|g" -e "s|@UPSTREAM_PORT@|$NG_ECHO|g" \
    -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" \
    -e "s|@LISTEN_HTTP2@|$LISTEN_HTTP2|g" -e "s|@HTTP2_ON@|$HTTP2_ON|g" \
    "$HERE/nginx.conf.template" >"$WORK/nginx.conf"
# The reply may contain characters sed treats specially (| &): substitute it with awk.
awk -v r="$REPLY" '{ i = index($0, "@REPLY@"); if (i) $0 = substr($0, 1, i-1) r substr($0, i+7); print }' \
    "$WORK/nginx.conf" >"$WORK/nginx.conf.tmp" && mv "$WORK/nginx.conf.tmp" "$WORK/nginx.conf"
"$NGINX" -t -q -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >&2 \
    || die "nginx -t failed; see $WORK/nginx.conf (KEEP=1)"
"$NGINX" -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NG_PID=$!; PIDS+=("$NG_PID")
wait_port "$NG_PUBLIC" "nginx" "$NG_PID"
wait_port "$NG_ECHO" "nginx" "$NG_PID"
status=$(request "$NG_PUBLIC")
[[ $status == 200 ]] || die "nginx sanity request: HTTP $status: $(cat "$WORK/resp" 2>/dev/null)"
cmp -s <(printf '%s' "$REPLY") "$WORK/resp" || die "nginx's reply differs from moltgate's"

tls_of() { # the negotiated protocol and cipher; and whether TLS 1.2 is refused
    local p c t12
    p=$(openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null \
        | sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is \(.*\)/\1 \2/p' | head -1)
    if openssl s_client -connect "127.0.0.1:$1" -tls1_2 </dev/null >/dev/null 2>&1; then t12="TLS 1.2 ACCEPTED"; else t12="TLS 1.2 refused"; fi
    printf '%s; %s' "${p:-unknown}" "$t12"
}

# ---------------------------------------------------------------- load
if [[ $TOOL == wrk ]]; then
    TEMPLATE=${BODY/'"t-1"'/'"t-%d"'}
    [[ $TEMPLATE == *'"t-%d"'* ]] || die "no thread id to vary in the body"
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
-- The same message in $CONVERSATIONS conversations (thread ids t-1, t-2, ...),
-- requests pre-formatted once per thread and cycled through.
local template = [[$TEMPLATE]]
local requests, n = {}, 0
init = function(args)
  for i = 1, $CONVERSATIONS do requests[i] = wrk.format(nil, nil, nil, string.format(template, i)) end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.0f\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
EOF
fi

# load_cmd PORT SECONDS: the load tool's command line.
load_cmd() {
    local url="https://127.0.0.1:$1/v1/messages"
    if [[ $TOOL == wrk ]]; then
        printf '%s ' wrk -t "$THREADS" -c "$CONNECTIONS" -d "${2}s" --timeout 5s --latency -s "$WORK/post.lua" "$url"
    else
        local proto=(); [[ $H2LOAD_PROTO == h1 ]] && proto=(--h1)
        printf '%s ' h2load "${proto[@]}" -D "$2" -c "$CONNECTIONS" -t "$THREADS" -m 1 -d "$WORK/body.json" \
            -H "'authorization: Bearer \$TOKEN'" -H "'content-type: application/json'" "$url"
    fi
}
run_load() { # run_load PORT SECONDS OUTFILE
    local url="https://127.0.0.1:$1/v1/messages"
    if [[ $TOOL == wrk ]]; then
        timeout $(( $2 + 30 )) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${2}s" --timeout 5s --latency \
            -s "$WORK/post.lua" "$url" >"$3" 2>&1
    else
        local proto=(); [[ $H2LOAD_PROTO == h1 ]] && proto=(--h1)
        timeout $(( $2 + 30 )) h2load "${proto[@]}" -D "$2" -c "$CONNECTIONS" -t "$THREADS" -m 1 \
            -d "$WORK/body.json" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
            "$url" >"$3" 2>&1
    fi
}

# CPU (user+system clock ticks) of a process and its direct children.
cpu_ticks() {
    local total=0 pid
    for pid in "$@" $(ps -o pid= --ppid "$(IFS=,; echo "$*")" 2>/dev/null); do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields 14 and 15 (utime, stime), counted after the ")" that ends the command name.
        local rest; rest=$(sed 's/.*) //' "/proc/$pid/stat")
        set -- $rest
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

# measure SIDE PORT PIDS...: sets RPS P50 P99 MEAN CPU_US_PER_REQ and prints a line.
declare -A SUM_RPS=()
measure() {
    local side=$1 port=$2; shift 2
    if (( WARMUP > 0 )); then run_load "$port" "$WARMUP" "$WORK/warmup.out" || true; fi
    local c0 c1 out="$WORK/$side.$ROUND.out"
    c0=$(cpu_ticks "$@")
    run_load "$port" "$DURATION" "$out" || { cat "$out" >&2; die "$side: load tool failed"; }
    c1=$(cpu_ticks "$@")
    local requests secs errs p50=- p99=- mean=-
    if [[ $TOOL == wrk ]]; then
        local line; line=$(grep '^RESULT ' "$out") || { cat "$out" >&2; die "$side: no result from wrk"; }
        local kv; declare -A r=()
        for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
        requests=${r[requests]}
        secs=$(awk -v d="${r[duration_us]}" 'BEGIN { printf "%.3f", d / 1e6 }')
        errs=$(( r[status_errors] + r[socket_errors] ))
        p50=$(awk -v v="${r[p50_us]}" 'BEGIN { printf "%.2f", v / 1000 }')
        p99=$(awk -v v="${r[p99_us]}" 'BEGIN { printf "%.2f", v / 1000 }')
        mean=$(awk -v v="${r[mean_us]}" 'BEGIN { printf "%.2f", v / 1000 }')
    else
        requests=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$out")
        secs=$(sed -n 's/^finished in \([0-9.]*\)s,.*/\1/p' "$out")
        errs=$(sed -n 's/^requests: .* \([0-9]*\) failed,.*/\1/p' "$out")
        errs=${errs:-0}
        mean=$(awk '/^time for request:/ { v = $6; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                 if (u == "us") v /= 1000; else if (u == "s") v *= 1000; printf "%.2f", v }' "$out")
        [[ -n $requests && -n $secs ]] || { cat "$out" >&2; die "$side: cannot parse h2load output"; }
    fi
    RPS=$(awk -v n="$requests" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')
    local cpu_us; cpu_us=$(awk -v t=$(( c1 - c0 )) -v hz="$HZ" -v n="$requests" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
    SUM_RPS[$side]=$(( ${SUM_RPS[$side]:-0} + RPS ))
    if (( errs > 0 )); then say "WARNING: $side had $errs failed requests (non-2xx or socket errors) in round $ROUND"; fi
    printf '%-9s round %d: %8s req/s  p50 %6s ms  p99 %6s ms  mean %6s ms  errors %d  server CPU %s us/req\n' \
        "$side" "$ROUND" "$RPS" "$p50" "$p99" "$mean" "$errs" "$cpu_us"
}

echo "== moltgate vs nginx, TLS 1.3 on loopback ($(nproc) CPUs: load tool, proxies and upstreams share them)"
echo "moltgate $("$BIN" --version 2>/dev/null | awk '{print $2}') ($BIN), upstream: $UPSTREAM demo assistant"
echo "nginx $NGINX_VERSION, upstream: nginx 'return 200' server block (same reply bytes: ${#REPLY} B)"
echo "TLS: moltgate $(tls_of "$MG_PUBLIC")"
echo "TLS: nginx    $(tls_of "$NG_PUBLIC")"
echo "load: $TOOL, ${DURATION}s measured (+${WARMUP}s warm-up) per side and round, $CONNECTIONS connections, $THREADS threads, $ROUNDS round(s); workers: $WORKERS"
echo "commands (the token is in \$TOKEN; the wrk script in $WORK/post.lua sets POST, the body and the headers):"
echo "  moltgate: $BIN assistant --listen 127.0.0.1:$ASSISTANT   # external upstream only"
echo "            $BIN run -c $WORK/moltgate.yaml"
echo "  nginx:    $NGINX -p $WORK -c $WORK/nginx.conf"
echo "  load:     $(load_cmd "$MG_PUBLIC" "$DURATION")"
echo "            $(load_cmd "$NG_PUBLIC" "$DURATION")"
echo "request: POST /v1/messages, ${#BODY} B JSON body, Authorization: Bearer <HS256 JWT, ${#TOKEN} B>; $([[ $TOOL == wrk ]] && echo "$CONVERSATIONS conversations" || echo "1 conversation")"

MG_PIDS=("$MG_PID"); [[ $UPSTREAM == external ]] && MG_PIDS+=("$ASSISTANT_PID")
for ROUND in $(seq "$ROUNDS"); do
    measure nginx "$NG_PUBLIC" "$NG_PID"
    measure moltgate "$MG_PUBLIC" "${MG_PIDS[@]}"
done
awk -v m="${SUM_RPS[moltgate]}" -v n="${SUM_RPS[nginx]}" -v r="$ROUNDS" 'BEGIN {
    printf "moltgate %.0f req/s, nginx %.0f req/s (mean of %d round(s)): ratio moltgate/nginx = %.2f\n", m / r, n / r, r, m / n }'
