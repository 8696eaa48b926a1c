#!/usr/bin/env bash
# make demo: start emad on a temporary socket, train the toy trainer against
# it (its EMA kept by emad), show the session it left behind and the daemon's
# status, then stop emad cleanly. Usage: client/demo.sh BUILD_DIR
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
"$build/emad" --socket "$sock" --state-dir "$dir/state" --log-level info --log-file "$dir/emad.log" &
pid=$!
for _ in $(seq 1 200); do
    [ -S "$sock" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "emad exited during startup" >&2; exit 1; }
    sleep 0.05
done

echo
echo "== toy_trainer: 300 batches, half-life 50ba, eval every 50, checkpoint at 120"
"$build/toy_trainer" --socket "$sock" --session toy --batches 300 --half-life 50ba

echo
echo "== emactl show toy"
"$build/emactl" --socket "$sock" show toy
echo
echo "== emactl status"
"$build/emactl" --socket "$sock" status

echo
echo "== stopping emad (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
echo "emad exited with status $?; socket removed: $([ -e "$sock" ] && echo no || echo yes)"
pid=""
