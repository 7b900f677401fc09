#!/usr/bin/env bash
# moltgate vs nginx on this machine, the three paths of issue 11, side by side
# in one run: TLS 1.3 on loopback, the same requests, bounded load, rounds
# alternating nginx / moltgate, median ratios.
#
#   passthrough  Telegram webhook, passthrough route: moltgate verifies the
#                secret token, dedupes the update_id, runs IP, rate, ABAC, RBAC
#                and DLP, and forwards to the bot; nginx proxy_passes to the
#                same bot. The bot (a fixed JSON answer) is one upstream nginx
#                process shared by both sides; its CPU is counted on neither.
#   translate    JWT API (POST /v1/messages, platform generic): moltgate turns
#                it into an Envelope and calls `moltgate assistant` (gRPC, its
#                own process); nginx proxy_passes to a `return 200` block in the
#                upstream nginx process. Each side's CPU is proxy + upstream.
#   embedded     the same JWT API to the in-process assistant (POST
#                /v1/embedded, `nodes: [embedded]`): moltgate alone against the
#                same nginx proxy + upstream as translate.
#   adapter      (issue 16; not in the default PATHS, needs passthrough in
#                PATHS) the passthrough path's Telegram webhook, byte for byte
#                (same bodies, update_id scheme and secret-token header), sent
#                to POST /hooks/telegram-adapter: a route declared by a
#                declarative adapter file, adapters/examples/telegram.yaml
#                copied to <policies>/adapters/telegram_declarative.yaml with
#                its route set to { path: /hooks/telegram-adapter, upstream:
#                bot, mode: passthrough } and its secret to the built-in
#                route's. moltgate counts it as `proxied`; nginx proxy_passes
#                /hooks/telegram-adapter to the same bot. The summary also
#                gives moltgate's adapter/built-in throughput: adapter over
#                passthrough, per round, median.
#
# Method (each rule fails the run, or warns loudly, when it does not hold):
#   - every request is a new message: a new Telegram update_id and a unique
#     text tag per request, numbered from a new base in every wrk run
#     (message.lua; wrk restarts its Lua state per run) and per wrk thread;
#   - before every timed run, SAMPLES curl requests of the same kind must be
#     answered by the upstream: the bot's exact body (passthrough, adapter), the
#     assistant's "echo: <the unique text>" (moltgate API paths), the
#     upstream's exact body (nginx API paths); else the run dies;
#   - during every moltgate run, the gateway's own counters
#     (moltgate_requests_total by outcome) must show every request forwarded
#     (proxied / answered): a duplicate fails the run; refusals, policy
#     notices, 503s or DLP findings are printed with a WARNING;
#   - wrk's non-2xx (status >= 400) plus socket errors are printed per side
#     and round, with a WARNING when > 0;
#   - the same certificate, connection count, request bytes; the shipped
#     policies/ with every stage on.
#
# Environment (defaults in brackets):
#   PATHS        which paths, in order          ["passthrough translate embedded"]
#                (any of passthrough, translate, embedded, adapter)
#   DURATION     seconds of measured load per side, path and round   [10]
#   WARMUP       seconds of unmeasured load before each timed run    [2]
#   CONNECTIONS  concurrent connections (wrk -c)                     [64]
#   THREADS      wrk threads                                         [1]
#   WORKERS      moltgate `threads` and the nginx front's worker_processes [nproc]
#   ROUNDS       rounds; each round runs nginx then moltgate on every path [3]
#   SAMPLES      curl requests checked before each timed run         [5]
#   CONVERSATIONS distinct chats / conversation threads cycled through [1000]
#   MOLTGATE_BIN the binary [target/release/moltgate, built if missing]
#   KEEP=1       keep the temp dir (configs, logs, wrk output) for inspection
#   FLOOR=1      also run a bare Pingora proxy (examples/pingora_floor.rs: the
#                same rustls TLS 1.3 listener, no policy, proxy to the bot) on
#                the passthrough path: how much of the gap to nginx is Pingora
#                and rustls themselves. Built with --features bench-floor.
#   SHARED=1     also run a second moltgate with `shared:` (issue 12) on a
#                redis-server of its own (loopback, no persistence), as the side
#                "shared" of every path: same config otherwise. Its CPU includes
#                redis-server's. The summary gives shared/moltgate throughput
#                and the p99 that Redis adds; the run warns if any shared-tier
#                operation failed or was skipped.
#   PERF=1       profile moltgate with `perf record -g` over each timed run and
#                print its top symbols (self time); profiles stay in the temp dir
#
# Everything listens on 127.0.0.1 only, on free high ports; every process the
# script starts is killed by pid on exit; all files live in one temp dir.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 2)}
ROUNDS=${ROUNDS:-3}
SAMPLES=${SAMPLES:-5}
CONVERSATIONS=${CONVERSATIONS:-1000}
PATHS=${PATHS:-passthrough translate embedded}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${MOLTGATE_BIN:-$ROOT/target/release/moltgate}

say() { printf '%s\n' "$*" >&2; }
die() { say "run.sh: $*"; exit 1; }

[[ -z ${TOOL:-} || ${TOOL:-} == wrk ]] \
    || die "TOOL=$TOOL is no longer supported: only wrk (its Lua script makes every request a new message)"
[[ -z ${UPSTREAM:-} ]] \
    || die "UPSTREAM was replaced by PATHS: PATHS=translate (external assistant) or PATHS=embedded"
for v in DURATION WARMUP CONNECTIONS THREADS WORKERS ROUNDS SAMPLES CONVERSATIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
(( DURATION >= 1 && DURATION <= 600 )) || die "DURATION must be 1..600 seconds"
(( WARMUP <= 600 )) || die "WARMUP must be 0..600 seconds"
(( ROUNDS >= 1 && ROUNDS <= 10 )) || die "ROUNDS must be 1..10"
(( THREADS >= 1 && THREADS <= 99 )) || die "THREADS must be 1..99"
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS must be at least THREADS"
(( WORKERS >= 1 )) || die "WORKERS must be at least 1"
(( SAMPLES >= 1 && SAMPLES <= 100 )) || die "SAMPLES must be 1..100"
(( CONVERSATIONS >= 1 && CONVERSATIONS <= 100000 )) || die "CONVERSATIONS must be 1..100000"
read -r -a PATH_LIST <<<"$PATHS"
(( ${#PATH_LIST[@]} >= 1 )) || die "PATHS is empty"
seen=" "
for p in "${PATH_LIST[@]}"; do
    case "$p" in passthrough|translate|embedded|adapter) ;; *) die "PATHS: unknown path '$p' (passthrough, translate, embedded, adapter)";; esac
    [[ $seen == *" $p "* ]] && die "PATHS: '$p' twice"
    seen+="$p "
done
# adapter: its figure is a ratio to the built-in route measured in the same rounds.
HAS_ADAPTER=0
if [[ $seen == *" adapter "* ]]; then
    HAS_ADAPTER=1
    [[ $seen == *" passthrough "* ]] \
        || die "PATHS: 'adapter' needs 'passthrough' too (the adapter/built-in ratio is measured in the same rounds), e.g. PATHS=\"passthrough adapter\""
fi

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
need wrk wrk
[[ ${SHARED:-0} == 1 ]] && need redis-server redis-server
NGINX=$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)

FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/pingora_floor}
if [[ ${FLOOR:-0} == 1 && ! -x $FLOOR_BIN ]]; then
    say "== $FLOOR_BIN missing: cargo build --release --example pingora_floor --features bench-floor"
    (cd "$ROOT" && cargo build --release --example pingora_floor --features bench-floor >&2)
fi
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
pick_port; NG_UP=$PORT
pick_port; FL_PUBLIC=$PORT
pick_port; MS_PUBLIC=$PORT
pick_port; MS_ADMIN=$PORT
pick_port; RD_PORT=$PORT

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
# The shipped abac.yaml lets loopback forward on /v1/messages and /hooks/**
# (so /hooks/telegram needs nothing). The embedded route has a path of its
# own, /v1/embedded: every rule that names /v1/messages names it too, in
# this temp copy only.
ABAC_GRANT='every abac.yaml rule naming "/v1/messages" also names "/v1/embedded" (bench temp copy only)'
sed -i 's|"/v1/messages"|"/v1/messages", "/v1/embedded"|g' "$WORK/policies/abac.yaml"
grep -q '"/v1/embedded"' "$WORK/policies/abac.yaml" \
    || die "policies/abac.yaml names no \"/v1/messages\" resource any more: update the embedded grant in run.sh"

# The requests. @ID@ @MID@ @USER@ @CONV@ @TAG@ are filled per request, by
# message.lua under load and by make_body for the curl samples. The text
# carries the unique tag; digit runs stay short (< 11 digits) so that no DLP
# number pattern (cards, phones, ID cards) can match the tag.
TG_SECRET=load-bench-telegram-secret-0123456789
TG_TEXT='Hi! Can you summarise the incident report and list the follow-up actions for the on-call team? (@TAG@)'
API_TEXT=$TG_TEXT
declare -A TEMPLATE_FILE=() URLPATH=()
cat >"$WORK/telegram.tmpl" <<EOF
{"update_id":@ID@,"message":{"message_id":@MID@,"from":{"id":@USER@,"is_bot":false,"first_name":"Alice","last_name":"Martin","username":"alice_m","language_code":"en"},"chat":{"id":@USER@,"first_name":"Alice","last_name":"Martin","username":"alice_m","type":"private"},"date":1732190000,"text":"$TG_TEXT"}}
EOF
cat >"$WORK/api.tmpl" <<EOF
{"platform":"web","sender":{"id":"u-1842","name":"Alice Martin"},"content":{"text":"$API_TEXT"},"timestamp":1732190000,"context":{"room_id":"ops-room","thread_id":"t-@CONV@","chat_type":"group"}}
EOF
# no trailing newline in the bodies
for f in telegram api; do printf '%s' "$(cat "$WORK/$f.tmpl")" >"$WORK/$f.tmpl"; done
TEMPLATE_FILE=([passthrough]=$WORK/telegram.tmpl [translate]=$WORK/api.tmpl [embedded]=$WORK/api.tmpl [adapter]=$WORK/telegram.tmpl)
URLPATH=([passthrough]=/hooks/telegram [translate]=/v1/messages [embedded]=/v1/embedded [adapter]=/hooks/telegram-adapter)

# The adapter path's route: the shipped Telegram example as a declarative
# adapter file, changed only where it must be: its route (the built-in
# passthrough route's upstream and mode, at a path of its own) and its
# secrets (the built-in route's secret token; the Bot API token, used only by
# translate-mode replies, a dummy). Installed only when PATHS has `adapter`.
ADAPTER_EXAMPLE=$ROOT/adapters/examples/telegram.yaml
ADAPTER_FILE=$WORK/policies/adapters/telegram_declarative.yaml
ADAPTER_NAME=
if (( HAS_ADAPTER )); then
    [[ -r $ADAPTER_EXAMPLE ]] || die "no $ADAPTER_EXAMPLE: the adapter path copies it"
    mkdir -p "$WORK/policies/adapters"
    # route: its block (the indented lines under `route:`) becomes one flow mapping.
    awk -v route="route: { path: ${URLPATH[adapter]}, upstream: bot, mode: passthrough }" '
        skip && /^[ \t]/ { next }
        { skip = 0 }
        /^route:/ { print route; skip = 1; n++; next }
        { print }
        END { if (n != 1) exit 1 }' "$ADAPTER_EXAMPLE" >"$ADAPTER_FILE" \
        || die "$ADAPTER_EXAMPLE has no single top-level route: section: update the adapter path in run.sh"
    sed -i -e "s|\${TELEGRAM_SECRET_TOKEN}|\"$TG_SECRET\"|" \
        -e 's|\${TELEGRAM_BOT_TOKEN}|123456:load-bench-unused|' "$ADAPTER_FILE"
    grep -qxF "route: { path: ${URLPATH[adapter]}, upstream: bot, mode: passthrough }" "$ADAPTER_FILE" \
        && grep -qE '^verify:' "$ADAPTER_FILE" && grep -qE '^ +scheme: token$' "$ADAPTER_FILE" \
        && grep -qE '^ +header: X-Telegram-Bot-Api-Secret-Token$' "$ADAPTER_FILE" \
        && grep -qxF "  secret: \"$TG_SECRET\"" "$ADAPTER_FILE" \
        && ! grep -q '\${' "$ADAPTER_FILE" \
        || die "$ADAPTER_FILE: the copy of $ADAPTER_EXAMPLE did not come out as expected (token scheme on X-Telegram-Bot-Api-Secret-Token, the route, the secret); update run.sh"
    ADAPTER_NAME=$(sed -n 's/^name: *\([a-z0-9_-]*\) *$/\1/p' "$ADAPTER_FILE")
    [[ -n $ADAPTER_NAME ]] || die "$ADAPTER_FILE: no name:"
fi

# The bot's webhook answer: a Bot API call inline, as a Telegram bot answers.
BOT_BODY='{"method":"sendMessage","chat_id":100000001,"text":"Thanks, noted. The on-call team will follow up on the incident report."}'

# ---------------------------------------------------------------- the upstream nginx (bot + API stand-in)
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
mkdir -p "$WORK/nginx-tmp"
# substitute VALUE for @NAME@ in FILE (values may hold | & that sed treats specially)
fill() { # fill FILE NAME VALUE
    awk -v n="@$2@" -v r="$3" '{ while ((i = index($0, n)) > 0) $0 = substr($0, 1, i-1) r substr($0, i+length(n)); print }' \
        "$1" >"$1.tmp" && mv "$1.tmp" "$1"
}
# The adapter path on nginx: a copy of FILE's `location = /hooks/telegram`
# block at the adapter's path, right after it (an exact location, like the
# original, so nginx does the same work on both paths). Both nginx processes
# get it: the front proxies the adapter path to the bot as it does
# /hooks/telegram, and the bot answers it (moltgate forwards the request path).
dup_location() { # dup_location FILE
    (( HAS_ADAPTER )) || return 0
    awk -v from="location = ${URLPATH[passthrough]} {" -v to="location = ${URLPATH[adapter]} {" '
        index($0, from) { copying = 1; block = ""; n++ }
        { print }
        copying { line = $0; if ((i = index(line, from)) > 0) line = substr(line, 1, i - 1) to substr(line, i + length(from)); block = block line "\n" }
        copying && /^[ \t]*}[ \t]*$/ { printf "%s", block; copying = 0 }
        END { if (n != 1) exit 1 }' "$1" >"$1.tmp" && mv "$1.tmp" "$1" \
        || die "$1: no single 'location = ${URLPATH[passthrough]} {' block to copy for the adapter path; update run.sh"
}
upstream_conf() { # upstream_conf REPLY
    sed -e "s|@WORK@|$WORK|g" -e "s|@UPSTREAM_PORT@|$NG_UP|g" "$HERE/nginx-upstream.conf.template" >"$WORK/nginx-upstream.conf"
    fill "$WORK/nginx-upstream.conf" BOT_BODY "$BOT_BODY"
    fill "$WORK/nginx-upstream.conf" REPLY "$1"
    dup_location "$WORK/nginx-upstream.conf"
    "$NGINX" -t -q -p "$WORK" -e "$WORK/nginx-upstream-error.log" -c "$WORK/nginx-upstream.conf" >&2 \
        || die "nginx -t failed on $WORK/nginx-upstream.conf (KEEP=1)"
}
# The API stand-in's body is moltgate's own reply, known only once moltgate
# answers: start with a placeholder, reload below.
upstream_conf '{"placeholder":true}'
"$NGINX" -p "$WORK" -e "$WORK/nginx-upstream-error.log" -c "$WORK/nginx-upstream.conf" >"$WORK/nginx-upstream.out" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_port "$NG_UP" "upstream nginx" "$UP_PID"

# ---------------------------------------------------------------- moltgate (one process, three routes) + assistant
cat >"$WORK/moltgate.yaml" <<EOF
listen:
  public:
    address: "127.0.0.1:$MG_PUBLIC"
    tls: { cert: certs/server.crt, key: certs/server.key }
  admin: { address: "127.0.0.1:$MG_ADMIN" }
policies: policies/
upstreams:
  assistant: { kind: grpc, nodes: ["127.0.0.1:$ASSISTANT"], balance: conversation, timeout: 30s }
  inprocess: { kind: grpc, nodes: [embedded], balance: conversation, timeout: 30s }
  bot:       { kind: http, nodes: ["127.0.0.1:$NG_UP"] }
routes:
  - { path: /hooks/telegram, platform: telegram, mode: passthrough, upstream: bot,
      secrets: { secret_token: "$TG_SECRET" } }
  - { path: /v1/messages, platform: generic, upstream: assistant }
  - { path: /v1/embedded, platform: generic, upstream: inprocess }
threads: $WORKERS
log: { format: json, level: info }
EOF
"$BIN" check -c "$WORK/moltgate.yaml" >"$WORK/check.out" 2>&1 \
    || { cat "$WORK/check.out" >&2; die "moltgate check failed on $WORK/moltgate.yaml"; }

"$BIN" assistant --listen "127.0.0.1:$ASSISTANT" >"$WORK/assistant.log" 2>&1 &
AS_PID=$!; PIDS+=("$AS_PID")
wait_port "$ASSISTANT" "moltgate assistant" "$AS_PID"
# The audit line (one JSON line per request) goes to a file, like nginx's access log.
(cd "$WORK" && exec "$BIN" run -c "$WORK/moltgate.yaml") >"$WORK/moltgate.log" 2>&1 &
MG_PID=$!; PIDS+=("$MG_PID")
wait_port "$MG_PUBLIC" "moltgate run" "$MG_PID"
for i in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$MG_ADMIN/readyz" || true) == 200 ]] && break
    (( i == 100 )) && die "moltgate not ready (/readyz) within 20 s; see $WORK/moltgate.log (KEEP=1)"
    sleep 0.2
done
MS_PID= RD_PID=
if [[ ${SHARED:-0} == 1 ]]; then
    redis-server --port "$RD_PORT" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
        >"$WORK/redis.log" 2>&1 &
    RD_PID=$!; PIDS+=("$RD_PID")
    wait_port "$RD_PORT" "redis-server" "$RD_PID"
    sed -e "s|127.0.0.1:$MG_PUBLIC|127.0.0.1:$MS_PUBLIC|" -e "s|127.0.0.1:$MG_ADMIN|127.0.0.1:$MS_ADMIN|" \
        "$WORK/moltgate.yaml" >"$WORK/moltgate-shared.yaml"
    printf 'shared:\n  redis: { url: "redis://127.0.0.1:%s/0", timeout: 50ms }\n  key_prefix: "bench:"\n  on_error: local\n' \
        "$RD_PORT" >>"$WORK/moltgate-shared.yaml"
    "$BIN" check -c "$WORK/moltgate-shared.yaml" >"$WORK/check-shared.out" 2>&1 \
        || { cat "$WORK/check-shared.out" >&2; die "moltgate check failed on $WORK/moltgate-shared.yaml"; }
    (cd "$WORK" && exec "$BIN" run -c "$WORK/moltgate-shared.yaml") >"$WORK/moltgate-shared.log" 2>&1 &
    MS_PID=$!; PIDS+=("$MS_PID")
    wait_port "$MS_PUBLIC" "moltgate run (shared)" "$MS_PID"
    for i in $(seq 100); do
        [[ $(curl -s --max-time 2 "http://127.0.0.1:$MS_ADMIN/readyz" || true) == *'"shared":"up"'* ]] && break
        (( i == 100 )) && die "moltgate (shared) not ready with Redis up within 20 s; see $WORK/moltgate-shared.log (KEEP=1)"
        sleep 0.2
    done
fi
TOKEN=$("$BIN" token -c "$WORK/moltgate.yaml" --sub bench-user --claim roles=user --claim tenant=acme --ttl 2h)

# ---------------------------------------------------------------- requests, samples
SEQ=0          # the run number: every wrk run and every sample batch takes a new one
BODY=          # make_body's outputs
TAG=
make_body() { # make_body PATH SEQ N: the body of request N of run SEQ (thread 0), as message.lua builds it
    local conv=$(( $3 % CONVERSATIONS + 1 ))
    TAG="m$2t0n$3"
    BODY=$(<"${TEMPLATE_FILE[$1]}")
    BODY=${BODY//@ID@/$2$(printf '%02d%08d' 0 "$3")}
    BODY=${BODY//@MID@/$3}
    BODY=${BODY//@USER@/$(( 100000000 + conv ))}
    BODY=${BODY//@CONV@/$conv}
    BODY=${BODY//@TAG@/$TAG}
}
HDRS=()
headers_for() { # headers_for PATH: the request headers, as wrk/curl -H arguments
    if [[ $1 == passthrough || $1 == adapter ]]; then
        HDRS=(-H 'Content-Type: application/json' -H "X-Telegram-Bot-Api-Secret-Token: $TG_SECRET")
    else
        HDRS=(-H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN")
    fi
}
STATUS=
RESP=
send() { # send PORT PATH: sends $BODY; sets STATUS and RESP
    headers_for "$2"
    printf '%s' "$BODY" >"$WORK/sample.json"
    rm -f "$WORK/resp"
    STATUS=$(curl -sS --max-time 5 --tlsv1.3 --cacert "$CA" -o "$WORK/resp" -w '%{http_code}' \
        "${HDRS[@]}" --data-binary @"$WORK/sample.json" "https://127.0.0.1:$1${URLPATH[$2]}" 2>"$WORK/curl.err" || true)
    RESP=$(cat "$WORK/resp" 2>/dev/null || true)
}
REPLY=
check_answer() { # check_answer PATH SIDE WHAT: dies unless $STATUS/$RESP came from the upstream
    local path=$1 side=$2 what=$3 ok=0 want
    if [[ $STATUS == 200 ]]; then
        if [[ $path == passthrough || $path == adapter ]]; then
            want="the bot's body"; [[ $RESP == "$BOT_BODY" ]] && ok=1
        elif [[ $side == moltgate || $side == shared ]]; then
            local text=${API_TEXT//@TAG@/$TAG}
            want="the assistant's echo: \"echo: $text\""; [[ $RESP == *"echo: $text"* ]] && ok=1
        else
            want="the upstream's body"; [[ $RESP == "$REPLY" ]] && ok=1
        fi
    fi
    (( ok )) || die "$path/$side: $what was not answered by the upstream: HTTP $STATUS, body '${RESP:0:300}' $(cat "$WORK/curl.err" 2>/dev/null)
  expected HTTP 200 with ${want:-a 200}; a refusal, a 200 'duplicate' (empty ack) or a policy notice is not throughput"
}
sample_check() { # sample_check PATH SIDE PORT: SAMPLES new messages, each answered by the upstream
    local i
    SEQ=$(( SEQ + 1 ))
    for i in $(seq "$SAMPLES"); do
        make_body "$1" "$SEQ" "$i"
        send "$3" "$1"
        check_answer "$1" "$2" "sample $i of $SAMPLES (tag $TAG)"
    done
}

# moltgate's translate answer becomes the API stand-in's body on the nginx side.
SEQ=$(( SEQ + 1 ))
make_body translate "$SEQ" 1
send "$MG_PUBLIC" translate
check_answer translate moltgate "the first request"
REPLY=$RESP
case "$REPLY" in *\'*|*\\*|*\$*) die "moltgate's reply has a quote, backslash or \$; cannot inline it in nginx.conf";; esac
upstream_conf "$REPLY"
kill -HUP "$UP_PID"
for i in $(seq 50); do
    got=$(curl -s --max-time 2 -X POST --data-binary x "http://127.0.0.1:$NG_UP/v1/messages" || true)
    [[ $got == "$REPLY" ]] && break
    (( i == 50 )) && die "the upstream nginx did not reload with moltgate's reply within 10 s"
    sleep 0.2
done

# ---------------------------------------------------------------- the nginx front
if printf '%s\n%s\n' 1.25.1 "$NGINX_VERSION" | sort -V -C; then
    LISTEN_HTTP2=; HTTP2_ON="http2 on;"          # nginx >= 1.25.1
else
    LISTEN_HTTP2=" http2"; HTTP2_ON=
fi
sed -e "s|@WORK@|$WORK|g" -e "s|@WORKERS@|$WORKERS|g" \
    -e "s|@PUBLIC_PORT@|$NG_PUBLIC|g" -e "s|@UPSTREAM_PORT@|$NG_UP|g" \
    -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" \
    -e "s|@LISTEN_HTTP2@|$LISTEN_HTTP2|g" -e "s|@HTTP2_ON@|$HTTP2_ON|g" \
    "$HERE/nginx.conf.template" >"$WORK/nginx.conf"
dup_location "$WORK/nginx.conf"
"$NGINX" -t -q -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >&2 \
    || die "nginx -t failed; see $WORK/nginx.conf (KEEP=1)"
"$NGINX" -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NG_PID=$!; PIDS+=("$NG_PID")
wait_port "$NG_PUBLIC" "nginx" "$NG_PID"

FL_PID=
if [[ ${FLOOR:-0} == 1 ]]; then
    "$FLOOR_BIN" "127.0.0.1:$FL_PUBLIC" "$CERT" "$KEY" "127.0.0.1:$NG_UP" "$WORKERS" >"$WORK/floor.log" 2>&1 &
    FL_PID=$!; PIDS+=("$FL_PID")
    wait_port "$FL_PUBLIC" "pingora_floor" "$FL_PID"
fi

tls_of() { # the negotiated protocol and cipher; and whether TLS 1.2 is refused
    local p t12
    p=$(openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null \
        | sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is \(.*\)/\1 \2/p' | head -1)
    if openssl s_client -connect "127.0.0.1:$1" -tls1_2 </dev/null >/dev/null 2>&1; then t12="TLS 1.2 ACCEPTED"; else t12="TLS 1.2 refused"; fi
    printf '%s; %s' "${p:-unknown}" "$t12"
}

# ---------------------------------------------------------------- measuring
# CPU (user+system clock ticks, all threads) of processes and their direct children.
cpu_ticks() {
    local total=0 pid rest
    for pid in "$@" $(ps -o pid= --ppid "$(IFS=,; echo "$*")" 2>/dev/null); do
        [[ -r /proc/$pid/stat ]] || continue
        # Fields 14 and 15 (utime, stime), counted after the ")" that ends the command name.
        rest=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $rest
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)

# The admin port of a moltgate side.
admin_of() { if [[ $1 == shared ]]; then echo "$MS_ADMIN"; else echo "$MG_ADMIN"; fi; }
# moltgate's requests_total{route=ROUTE} by outcome, as "outcome=count" words.
outcomes() { # outcomes ROUTE [SIDE]
    curl -s --max-time 5 "http://127.0.0.1:$(admin_of "${2:-moltgate}")/metrics" \
        | awk -v r="route=\"$1\"" '
            /^moltgate_requests_total\{/ && index($0, r) {
                if (match($0, /outcome="[^"]*"/)) { o = substr($0, RSTART + 9, RLENGTH - 10); c[o] += $NF }
            }
            END { for (o in c) printf "%s=%d ", o, c[o] }'
}
dlp_findings() { # dlp_findings [SIDE]
    curl -s --max-time 5 "http://127.0.0.1:$(admin_of "${1:-moltgate}")/metrics" \
        | awk '/^moltgate_dlp_findings_total\{/ { s += $NF } END { printf "%d", s }'
}
# the difference AFTER - BEFORE of two outcomes() strings, without the expected outcome
outcome_delta() { # outcome_delta "BEFORE" "AFTER" EXPECTED: prints "forwarded OTHER_LIST"
    awk -v b="$1" -v a="$2" -v want="$3" 'BEGIN {
        n = split(b, bs, " "); for (i = 1; i <= n; i++) { split(bs[i], kv, "="); before[kv[1]] = kv[2] }
        n = split(a, as, " "); other = ""
        for (i = 1; i <= n; i++) {
            split(as[i], kv, "="); d = kv[2] - before[kv[1]]
            if (kv[1] == want) fwd = d; else if (d > 0) other = other sprintf("%s%s=%d", other == "" ? "" : ",", kv[1], d)
        }
        printf "%d %s", fwd, other == "" ? "-" : other }'
}

run_wrk() { # run_wrk PATH PORT SECONDS OUTFILE: one bounded wrk run, with a new SEQ
    SEQ=$(( SEQ + 1 ))
    headers_for "$1"
    LOAD_SEQ=$SEQ LOAD_TEMPLATE=${TEMPLATE_FILE[$1]} LOAD_CONVERSATIONS=$CONVERSATIONS \
        timeout $(( $3 + 30 )) wrk -t "$THREADS" -c "$CONNECTIONS" -d "${3}s" --timeout 5s --latency \
        -s "$HERE/message.lua" "${HDRS[@]}" "https://127.0.0.1:$2${URLPATH[$1]}" >"$4" 2>&1
}

# CPU groups: NAME:PID[,PID] words; counted ones first, then "|" and the ones counted on neither side.
groups_of() { # groups_of PATH SIDE
    case "$1:$2" in
        passthrough:moltgate|adapter:moltgate) echo "gateway:$MG_PID | bot:$UP_PID" ;;
        passthrough:nginx|adapter:nginx)       echo "proxy:$NG_PID | bot:$UP_PID" ;;
        passthrough:floor)    echo "proxy:$FL_PID | bot:$UP_PID" ;;
        translate:moltgate)   echo "gateway:$MG_PID assistant:$AS_PID |" ;;
        embedded:moltgate)    echo "gateway:$MG_PID |" ;;
        *:nginx)              echo "proxy:$NG_PID upstream:$UP_PID |" ;;
        passthrough:shared|adapter:shared) echo "gateway:$MS_PID redis:$RD_PID | bot:$UP_PID" ;;
        translate:shared)     echo "gateway:$MS_PID redis:$RD_PID assistant:$AS_PID |" ;;
        embedded:shared)      echo "gateway:$MS_PID redis:$RD_PID |" ;;
    esac
}

declare -A R=()   # R[path:side:round:metric]
SIDES=(nginx moltgate)
declare -A PORT_OF=([nginx]=$NG_PUBLIC [moltgate]=$MG_PUBLIC [floor]=$FL_PUBLIC [shared]=$MS_PUBLIC)
sides_of() { # sides_of PATH: the sides measured on PATH, in order
    local sides="${SIDES[*]}"
    [[ $1 == passthrough && -n $FL_PID ]] && sides="nginx floor moltgate"
    [[ -n $MS_PID ]] && sides+=" shared"
    echo "$sides"
}
declare -A EXPECTED_OUTCOME=([passthrough]=proxied [translate]=answered [embedded]=answered [adapter]=proxied)
WARNINGS=0

measure() { # measure PATH SIDE ROUND
    local path=$1 side=$2 round=$3 port=${PORT_OF[$2]}
    local out="$WORK/$path.$side.$round.out"
    if (( WARMUP > 0 )); then
        run_wrk "$path" "$port" "$WARMUP" "$WORK/warmup.out" || say "note: $path/$side warm-up: wrk exited non-zero"
    fi
    sample_check "$path" "$side" "$port"

    local groups g name counted=1 before=() after=() ob= oa= fb=0
    groups=$(groups_of "$path" "$side")
    for g in $groups; do [[ $g == '|' ]] && continue; before+=("$(cpu_ticks ${g#*:})"); done
    [[ $side == moltgate || $side == shared ]] && ob=$(outcomes "${URLPATH[$path]}" "$side") && fb=$(dlp_findings "$side")
    local perf_pid=
    if [[ ${PERF:-0} == 1 && $side == moltgate ]]; then
        # Profile the gateway over the timed run (call graphs; report below).
        perf record -q -F 499 --call-graph dwarf,16384 -p "$MG_PID" -o "$WORK/perf.$path.$round.data" -- sleep "$DURATION" \
            >"$WORK/perf.$path.$round.log" 2>&1 &
        perf_pid=$!
    fi
    run_wrk "$path" "$port" "$DURATION" "$out" || { cat "$out" >&2; die "$path/$side: wrk failed or timed out"; }
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        perf report -q --stdio --no-children --sort symbol -i "$WORK/perf.$path.$round.data" 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | sed -E 's/[[:space:]-]+$//' | head -25 >"$WORK/perf.$path.$round.txt" || true
        say "== perf: $path round $round, top symbols of moltgate (self time)"
        sed 's/^/   /' "$WORK/perf.$path.$round.txt" >&2
    fi
    for g in $groups; do [[ $g == '|' ]] && continue; after+=("$(cpu_ticks ${g#*:})"); done

    local line kv; line=$(grep '^RESULT ' "$out") || { cat "$out" >&2; die "$path/$side: no result from wrk"; }
    declare -A r=()
    for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
    local requests=${r[requests]} errs=$(( r[status_errors] + r[socket_errors] ))
    (( requests > 0 )) || die "$path/$side: wrk completed no request"
    local rps p50 p99
    rps=$(awk -v n="$requests" -v d="${r[duration_us]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')
    p50=$(awk -v v="${r[p50_us]}" 'BEGIN { printf "%.2f", v / 1000 }')
    p99=$(awk -v v="${r[p99_us]}" 'BEGIN { printf "%.2f", v / 1000 }')

    # CPU per request of each group
    local k=0 total=0 parts= aside= us
    for g in $groups; do
        if [[ $g == '|' ]]; then counted=0; continue; fi
        name=${g%%:*}
        us=$(awk -v t=$(( after[k] - before[k] )) -v hz="$HZ" -v n="$requests" 'BEGIN { printf "%.0f", t / hz * 1e6 / n }')
        k=$(( k + 1 ))
        if (( counted )); then
            total=$(( total + us )); parts+="${parts:+ + }$name $us"
            R[$path:$side:$round:cpu_$name]=$us
        else
            aside+="${aside:+, }$name $us us/req counted on neither side"
            R[$path:$side:$round:aside_$name]=$us
        fi
    done
    R[$path:$side:$round:rps]=$rps
    R[$path:$side:$round:p99]=$p99
    R[$path:$side:$round:cpu]=$total
    R[$path:$side:$round:errs]=$errs
    local detail=$parts; [[ $parts == *+* ]] || detail=
    printf '%-11s round %d %-8s: %7s req/s  p50 %6s ms  p99 %6s ms  non-2xx %d  CPU %4s us/req%s%s\n' \
        "$path" "$round" "$side" "$rps" "$p50" "$p99" "$errs" "$total" \
        "${detail:+ ($detail)}" "${aside:+ [$aside]}"
    if (( errs > 0 )); then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: $path/$side round $round: $errs non-2xx or socket errors (status $((r[status_errors])), socket $((r[socket_errors])))"
    fi
    if [[ $side == moltgate || $side == shared ]]; then
        oa=$(outcomes "${URLPATH[$path]}" "$side")
        local d fwd other fa
        d=$(outcome_delta "$ob" "$oa" "${EXPECTED_OUTCOME[$path]}")
        fwd=${d%% *}; other=${d#* }
        R[$path:$side:$round:other]=$other
        printf '%-11s round %d %-8s: moltgate counted %d %s during the run (wrk completed %d)%s\n' "$path" "$round" "$side" \
            "$fwd" "${EXPECTED_OUTCOME[$path]}" "$requests" "$([[ $other == - ]] || echo ", and $other")"
        if (( fwd < requests )); then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: $path/moltgate round $round: moltgate counted $fwd ${EXPECTED_OUTCOME[$path]} but wrk completed $requests requests"
        fi
        if [[ $other == *duplicate* ]]; then
            die "$path/moltgate round $round: moltgate answered requests of the timed run as duplicates ($other): the run repeated earlier messages, so it did not measure the work of new ones"
        fi
        if [[ $other != - ]]; then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: $path/moltgate round $round: not every request reached the upstream: ${EXPECTED_OUTCOME[$path]}=$fwd, others: $other (moltgate_requests_total)"
        fi
        fa=$(dlp_findings "$side")
        if (( fa > fb )); then
            WARNINGS=$(( WARNINGS + 1 ))
            say "WARNING: $path/moltgate round $round: $(( fa - fb )) DLP findings during the run (the bodies should be clean)"
        fi
    fi
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ---------------------------------------------------------------- header
echo "== moltgate vs nginx, TLS 1.3 on loopback, paths: ${PATH_LIST[*]} ($(nproc) CPUs: wrk, proxies and upstreams share them)"
echo "moltgate $("$BIN" --version 2>/dev/null | awk '{print $2}') ($BIN), threads: $WORKERS; nginx $NGINX_VERSION front, worker_processes: $WORKERS"
echo "TLS: moltgate $(tls_of "$MG_PUBLIC")"
echo "TLS: nginx    $(tls_of "$NG_PUBLIC")"
[[ -n $FL_PID ]] && echo "TLS: floor    $(tls_of "$FL_PUBLIC") (bare Pingora, $FLOOR_BIN)"
echo "load: wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'), ${DURATION}s measured (+${WARMUP}s warm-up) per side, path and round, $CONNECTIONS connections, $THREADS thread(s), $ROUNDS round(s), $SAMPLES checked samples before each timed run"
echo "upstreams: bot = POST /hooks/telegram$( (( HAS_ADAPTER )) && echo " and ${URLPATH[adapter]}") on an upstream nginx (1 worker, its own process; shared by both sides);"
echo "           nginx API stand-in = the same upstream nginx answering moltgate's reply (${#REPLY} B);"
echo "           moltgate assistant --listen 127.0.0.1:$ASSISTANT (translate); nodes: [embedded] (embedded)"
make_body passthrough 1 1; tg_len=${#BODY}; make_body translate 1 1; api_len=${#BODY}
echo "requests: passthrough POST /hooks/telegram, ~$tg_len B Telegram update + X-Telegram-Bot-Api-Secret-Token, bot answer ${#BOT_BODY} B;"
echo "          translate POST /v1/messages, embedded POST /v1/embedded (nginx: the same paths), ~$api_len B JSON + Bearer HS256 JWT (${#TOKEN} B); $CONVERSATIONS conversations"
if (( HAS_ADAPTER )); then
    echo "          adapter POST ${URLPATH[adapter]}: the passthrough request (same body, header and bot; nginx: the same proxy_pass at that path),"
    echo "          to the route of declarative adapter '$ADAPTER_NAME': $ADAPTER_EXAMPLE copied to"
    echo "          $ADAPTER_FILE with $(grep -m1 '^route:' "$ADAPTER_FILE"), verify.secret = the built-in route's secret_token"
fi
echo "policies: shipped policies/ (ABAC, RBAC, identities, DLP), security_policy.yaml replaced (rate limits out of reach, known JWT secret);"
echo "          ABAC grant: $ABAC_GRANT"
echo "CPU per request: /proc/PID/stat user+system over the timed run; moltgate = gateway (+ assistant for translate);"
echo "                 nginx = front (master + workers) + upstream for translate/embedded; the shared bot is counted on neither side"
echo "commands:"
echo "  upstream: $NGINX -p $WORK -c $WORK/nginx-upstream.conf"
echo "  nginx:    $NGINX -p $WORK -c $WORK/nginx.conf"
echo "  moltgate: $BIN assistant --listen 127.0.0.1:$ASSISTANT; $BIN run -c $WORK/moltgate.yaml"
echo "  load:     LOAD_SEQ=<new per run> LOAD_TEMPLATE=<telegram|api body> wrk -t $THREADS -c $CONNECTIONS -d ${DURATION}s --timeout 5s --latency -s $HERE/message.lua -H ... https://127.0.0.1:<port><path>"

# ---------------------------------------------------------------- rounds: nginx then moltgate, path by path
for ROUND in $(seq "$ROUNDS"); do
    for path in "${PATH_LIST[@]}"; do
        for side in $(sides_of "$path"); do measure "$path" "$side" "$ROUND"; done
        printf '%-11s round %d: throughput moltgate/nginx %s, p99 ratio %s\n' "$path" "$ROUND" \
            "$(awk -v m="${R[$path:moltgate:$ROUND:rps]}" -v n="${R[$path:nginx:$ROUND:rps]}" 'BEGIN { printf "%.2f", m / n }')" \
            "$(awk -v m="${R[$path:moltgate:$ROUND:p99]}" -v n="${R[$path:nginx:$ROUND:p99]}" 'BEGIN { printf "%.2f", (n > 0 ? m / n : 0) }')"
    done
    if (( HAS_ADAPTER )); then
        printf '%-11s round %d: moltgate adapter/built-in throughput %s (%s vs %s req/s), p99 ratio %s\n' adapter "$ROUND" \
            "$(awk -v a="${R[adapter:moltgate:$ROUND:rps]}" -v b="${R[passthrough:moltgate:$ROUND:rps]}" 'BEGIN { printf "%.2f", a / b }')" \
            "${R[adapter:moltgate:$ROUND:rps]}" "${R[passthrough:moltgate:$ROUND:rps]}" \
            "$(awk -v a="${R[adapter:moltgate:$ROUND:p99]}" -v b="${R[passthrough:moltgate:$ROUND:p99]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
    fi
done

# ---------------------------------------------------------------- summary: one line per path
echo "== summary (medians over $ROUNDS round(s); CPU in us per request)"
for path in "${PATH_LIST[@]}"; do
    ratios=() p99s=() rm=() rn=()
    declare -A errsum=([nginx]=0 [moltgate]=0)
    for ROUND in $(seq "$ROUNDS"); do
        ratios+=("$(awk -v m="${R[$path:moltgate:$ROUND:rps]}" -v n="${R[$path:nginx:$ROUND:rps]}" 'BEGIN { print m / n }')")
        p99s+=("$(awk -v m="${R[$path:moltgate:$ROUND:p99]}" -v n="${R[$path:nginx:$ROUND:p99]}" 'BEGIN { print (n > 0 ? m / n : 0) }')")
        rm+=("${R[$path:moltgate:$ROUND:rps]}"); rn+=("${R[$path:nginx:$ROUND:rps]}")
        for side in "${SIDES[@]}"; do errsum[$side]=$(( ${errsum[$side]} + ${R[$path:$side:$ROUND:errs]} )); done
    done
    cpu_text() { # cpu_text SIDE: "250 us" or "510 us (gateway 396 + assistant 114)"
        local side=$1 g name vals parts= n=0 med
        for g in $(groups_of "$path" "$side"); do
            [[ $g == '|' ]] && break
            name=${g%%:*}; vals=()
            for ROUND in $(seq "$ROUNDS"); do vals+=("${R[$path:$side:$ROUND:cpu_$name]}"); done
            med=$(median "${vals[@]}"); parts+="${parts:+ + }$name $(printf '%.0f' "$med")"; n=$(( n + 1 ))
        done
        vals=(); for ROUND in $(seq "$ROUNDS"); do vals+=("${R[$path:$side:$ROUND:cpu]}"); done
        printf '%.0f us' "$(median "${vals[@]}")"
        (( n > 1 )) && printf ' (%s)' "$parts"
        return 0
    }
    aside=
    if [[ $path == passthrough || $path == adapter ]]; then
        bm=(); bn=()
        for ROUND in $(seq "$ROUNDS"); do bm+=("${R[$path:moltgate:$ROUND:aside_bot]}"); bn+=("${R[$path:nginx:$ROUND:aside_bot]}"); done
        aside=$(printf ' (the shared bot: %.0f us/req behind moltgate, %.0f behind nginx, counted on neither side)' \
            "$(median "${bm[@]}")" "$(median "${bn[@]}")")
    fi
    printf '%s: throughput moltgate/nginx %.2f (median of %d; %.0f vs %.0f req/s), p99 ratio %.2f, CPU/req moltgate %s vs nginx %s%s, non-2xx %d/%d\n' \
        "$path" "$(median "${ratios[@]}")" "$ROUNDS" "$(median "${rm[@]}")" "$(median "${rn[@]}")" "$(median "${p99s[@]}")" \
        "$(cpu_text moltgate)" "$(cpu_text nginx)" "$aside" "${errsum[moltgate]}" "${errsum[nginx]}"
    unset errsum
    if [[ $path == passthrough && -n $FL_PID ]]; then
        fr=() fc=() fp=() ferr=0
        for ROUND in $(seq "$ROUNDS"); do
            ferr=$(( ferr + ${R[$path:floor:$ROUND:errs]} ))
            fr+=("$(awk -v m="${R[$path:floor:$ROUND:rps]}" -v n="${R[$path:nginx:$ROUND:rps]}" 'BEGIN { print m / n }')")
            fp+=("$(awk -v m="${R[$path:floor:$ROUND:p99]}" -v n="${R[$path:nginx:$ROUND:p99]}" 'BEGIN { print (n > 0 ? m / n : 0) }')")
            fc+=("${R[$path:floor:$ROUND:cpu]}")
        done
        printf '%s floor (bare Pingora, no policy): throughput floor/nginx %.2f, p99 ratio %.2f, CPU/req %.0f us, non-2xx %d\n' \
            "$path" "$(median "${fr[@]}")" "$(median "${fp[@]}")" "$(median "${fc[@]}")" "$ferr"
    fi
done
if (( HAS_ADAPTER )); then
    # Issue 16's figure: messages per second through a declarative adapter
    # against the built-in platform, same gateway, same rounds.
    ar=() ap=() ac=() bc=() arps=() brps=()
    for ROUND in $(seq "$ROUNDS"); do
        ar+=("$(awk -v a="${R[adapter:moltgate:$ROUND:rps]}" -v b="${R[passthrough:moltgate:$ROUND:rps]}" 'BEGIN { print a / b }')")
        ap+=("$(awk -v a="${R[adapter:moltgate:$ROUND:p99]}" -v b="${R[passthrough:moltgate:$ROUND:p99]}" 'BEGIN { print (b > 0 ? a / b : 0) }')")
        arps+=("${R[adapter:moltgate:$ROUND:rps]}"); brps+=("${R[passthrough:moltgate:$ROUND:rps]}")
        ac+=("${R[adapter:moltgate:$ROUND:cpu]}"); bc+=("${R[passthrough:moltgate:$ROUND:cpu]}")
    done
    printf 'adapter/built-in (moltgate, declarative %s at %s vs built-in telegram at %s): throughput %.2f (median of %d; %.0f vs %.0f req/s), p99 ratio %.2f, CPU/req %.0f vs %.0f us\n' \
        "$ADAPTER_NAME" "${URLPATH[adapter]}" "${URLPATH[passthrough]}" "$(median "${ar[@]}")" "$ROUNDS" \
        "$(median "${arps[@]}")" "$(median "${brps[@]}")" "$(median "${ap[@]}")" "$(median "${ac[@]}")" "$(median "${bc[@]}")"
    # The adapter's requests must be labelled with its own route and platform
    # (the adapter's name) in the metrics and the audit lines.
    series=$(curl -s --max-time 5 "http://127.0.0.1:$MG_ADMIN/metrics" \
        | awk -v r="route=\"${URLPATH[adapter]}\"" '/^moltgate_requests_total\{/ && index($0, r) { sub(/^moltgate_requests_total/, ""); printf "%s%s", sep, $0; sep = ", " }')
    echo "adapter labels: moltgate_requests_total $series"
    if [[ $series != *"platform=\"$ADAPTER_NAME\""* ]] || [[ $(grep -o 'platform="[^"]*"' <<<"$series" | sort -u) != "platform=\"$ADAPTER_NAME\"" ]]; then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: moltgate_requests_total{route=\"${URLPATH[adapter]}\"} is not labelled platform=\"$ADAPTER_NAME\" (the adapter's name): $series"
    fi
    audit=$(grep -F "\"${URLPATH[adapter]}\"" "$WORK/moltgate.log" | tail -1 || true)
    echo "adapter audit line (last): ${audit:0:600}"
fi
if [[ -n $MS_PID ]]; then
    for path in "${PATH_LIST[@]}"; do
        tr=() dp=() sc=() mc=() se=0
        for ROUND in $(seq "$ROUNDS"); do
            se=$(( se + ${R[$path:shared:$ROUND:errs]} ))
            tr+=("$(awk -v s="${R[$path:shared:$ROUND:rps]}" -v m="${R[$path:moltgate:$ROUND:rps]}" 'BEGIN { print s / m }')")
            dp+=("$(awk -v s="${R[$path:shared:$ROUND:p99]}" -v m="${R[$path:moltgate:$ROUND:p99]}" 'BEGIN { print s - m }')")
            sc+=("${R[$path:shared:$ROUND:cpu]}"); mc+=("${R[$path:moltgate:$ROUND:cpu]}")
        done
        printf '%s shared (Redis): throughput shared/moltgate %.2f, p99 added by Redis %+.2f ms, CPU/req %.0f us (gateway + redis) vs %.0f us, non-2xx %d\n' \
            "$path" "$(median "${tr[@]}")" "$(median "${dp[@]}")" "$(median "${sc[@]}")" "$(median "${mc[@]}")" "$se"
    done
    shared_ops=$(curl -s --max-time 5 "http://127.0.0.1:$MS_ADMIN/metrics" \
        | awk '/^moltgate_shared_ops_total\{/ { if (match($0, /op="[^"]*"/)) op = substr($0, RSTART + 4, RLENGTH - 5);
                 if (match($0, /result="[^"]*"/)) res = substr($0, RSTART + 8, RLENGTH - 9); c[op "=" res] += $NF }
               END { for (k in c) printf "%s:%d ", k, c[k] }')
    echo "shared-tier operations over the whole run: $shared_ops"
    # Per operation, the histogram bucket that holds the median and the 99th
    # percentile of moltgate_shared_seconds (the gateway's view of one round trip).
    echo "shared-tier round trips (upper bounds of histogram buckets): $(curl -s --max-time 5 "http://127.0.0.1:$MS_ADMIN/metrics" \
        | awk '/^moltgate_shared_seconds_bucket\{/ {
                 match($0, /op="[^"]*"/); op = substr($0, RSTART + 4, RLENGTH - 5)
                 match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
                 n[op]++; les[op, n[op]] = le; cnt[op, n[op]] = $NF }
               END { for (op in n) { total = cnt[op, n[op]]; if (total == 0) continue; p50 = ""; p99 = ""
                       for (i = 1; i <= n[op]; i++) {
                         if (p50 == "" && cnt[op, i] >= total * 0.5) p50 = les[op, i]
                         if (p99 == "" && cnt[op, i] >= total * 0.99) p99 = les[op, i] }
                       printf "%s p50<=%ss p99<=%ss; ", op, p50, p99 } }')"
    if [[ $shared_ops == *=timeout* || $shared_ops == *=error* || $shared_ops == *=skipped* ]]; then
        WARNINGS=$(( WARNINGS + 1 ))
        say "WARNING: shared-tier operations failed or were skipped during the run (see above): the shared side fell back to local state"
    fi
fi
failures=$(curl -s --max-time 5 "http://127.0.0.1:$MG_ADMIN/metrics" \
    | awk '/^moltgate_upstream_failures_total\{/ && $NF > 0 { sub(/^moltgate_upstream_failures_total/, ""); printf "%s%s", sep, $0; sep = ", " }')
if [[ -n $failures ]]; then
    WARNINGS=$(( WARNINGS + 1 ))
    say "WARNING: moltgate counted upstream failures over the whole run (warm-ups included): $failures"
fi
exhausted=$(grep -c -i 'resource.exhausted' "$WORK/moltgate.log" || true)
if (( exhausted > 0 )); then
    WARNINGS=$(( WARNINGS + 1 ))
    say "WARNING: $exhausted log lines of moltgate mention RESOURCE_EXHAUSTED (the assistant shed load)"
fi
if (( WARNINGS > 0 )); then
    say "WARNING: $WARNINGS warning(s) above: non-2xx answers, requests that did not reach the upstream, or DLP findings; the ratios include them"
fi
