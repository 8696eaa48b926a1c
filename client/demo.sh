#!/usr/bin/env bash
# make demo: start emad on a temporary socket, show `emactl status`, stop it
# cleanly. Usage: client/demo.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
dir=$(mktemp -d /tmp/emad-demo-XXXXXX)
sock=$dir/emad.sock
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

echo "== starting emad on $sock"
"$build/emad" --socket "$sock" --state-dir "$dir/state" --log-level info &
pid=$!
for _ in $(seq 1 200); do
    [ -S "$sock" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "emad exited during startup" >&2; exit 1; }
    sleep 0.05
done

echo "== emactl status"
"$build/emactl" --socket "$sock" status
echo
echo "== emactl status --json"
"$build/emactl" --socket "$sock" status --json

echo
echo "== stopping emad (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
echo "emad exited with status $?; socket removed: $([ -e "$sock" ] && echo no || echo yes)"
pid=""
