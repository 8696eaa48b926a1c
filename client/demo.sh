#!/usr/bin/env bash
# make demo: start emad on a temporary socket, train a small PyTorch CNN
# against it (client/python/examples/train_cnn.py: its EMA kept by emad,
# progress, and after each epoch the validation accuracy of the training
# weights and of the EMA weights), show the session it left behind with
# `emactl list` and `emactl show`, then stop emad cleanly.
# Without PyTorch for $PYTHON (default /usr/bin/python3) the C toy trainer
# (build/toy_trainer) takes its place. Usage: client/demo.sh BUILD_DIR
set -euo pipefail
build=${1:-build}
python=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
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
if "$python" -c 'import torch' 2>/dev/null; then
    session=demo-cnn
    echo "== PyTorch: a small CNN, 4 epochs of 50 steps, EMA half-life 20ba kept by emad"
    EMACLIENT_LIB=$(cd "$build" && pwd)/libemaclient.so PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}" \
        "$python" "$here/python/examples/train_cnn.py" --socket "$sock" --session "$session" --keep
else
    session=toy
    echo "(no PyTorch for $python: running the C toy trainer instead)"
    echo "== toy_trainer: 300 batches, half-life 50ba, eval every 50, checkpoint at 120"
    "$build/toy_trainer" --socket "$sock" --session "$session" --batches 300 --half-life 50ba
fi

echo
echo "== emactl list"
"$build/emactl" --socket "$sock" list
echo
echo "== emactl show $session"
"$build/emactl" --socket "$sock" show "$session"

echo
echo "== stopping emad (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
echo "emad exited with status $?; socket removed: $([ -e "$sock" ] && echo no || echo yes)"
pid=""
