#!/usr/bin/env bash
# deps.sh installs the Debian packages Meridian needs, only when they are missing, and prints
# their versions. It is the only place system packages are installed, and is safe to run twice.
set -euo pipefail

# package -> a binary it provides (checked on PATH and in Debian's PostgreSQL bin dir).
declare -A want=(
  [postgresql]=initdb
  [redis-server]=redis-server
  [nginx]=nginx                 # the reference proxy of bench -scenario proxy and its test
)

pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local d; d=$(pgbin)
  [ -n "$d" ] && [ -x "$d/$1" ]
}

missing=()
for pkg in "${!want[@]}"; do
  have "${want[$pkg]}" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: need root to install ${missing[*]} (try: sudo make deps)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services on install; Meridian runs its own throwaway instances,
  # so stop the system ones to free their default ports.
  if command -v service >/dev/null 2>&1; then
    service postgresql stop >/dev/null 2>&1 || true
    service redis-server stop >/dev/null 2>&1 || true
    service nginx stop >/dev/null 2>&1 || true
  fi
fi

d=$(pgbin)
echo "deps: postgres    $("${d:-/usr/bin}/postgres" --version 2>/dev/null || echo missing)"
echo "deps: redis       $(redis-server --version 2>/dev/null | awk '{print $3}' || echo missing)"
echo "deps: nginx       $(nginx -v 2>&1 | awk -F/ '{print $2}' || echo missing)"
echo "deps: go          $(go version | awk '{print $3}')"
