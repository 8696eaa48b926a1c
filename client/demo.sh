#!/usr/bin/env bash
# make demo: start emad on a temporary socket, train a small PyTorch CNN
# against it (client/python/examples/train_cnn.py: its EMA kept by emad,
# progress, and after each epoch the validation accuracy of the training
# weights and of the EMA weights), show the session it left behind with
# `emactl status` and `emactl show`, drop it, then stop emad cleanly.
# emad's socket, state directory and log live in one temporary directory,
# removed at the end however the demo ends: the demo leaves no state file
# behind, and dropping the session removes its shadow from /dev/shm.
# With PyTorch and matplotlib, a post-hoc EMA part follows: one run with power profiles
# snapshotted, the EMA of 8 widths rebuilt and evaluated, the plot written to
# $DEMO_PLOT (default BUILD_DIR/posthoc-sigma.png; docs/posthoc-sigma.png is one);
# $DEMO_POSTHOC_ARGS adds options of posthoc_sigma.py (the tests make the run small).
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
    local rc=$?
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
    if [ "$rc" -ne 0 ] && [ -s "$dir/emad.log" ]; then
        echo "== the demo failed; the end of emad's log:" >&2
        tail -n 30 "$dir/emad.log" >&2
    fi
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
echo "== emactl status"
"$build/emactl" --socket "$sock" status
echo
echo "== emactl show $session"
"$build/emactl" --socket "$sock" show "$session"

echo
echo "== emactl drop $session (its shadow leaves /dev/shm)"
"$build/emactl" --socket "$sock" drop "$session"

if "$python" -c 'import torch, matplotlib' 2>/dev/null; then
    echo
    echo "== post-hoc EMA: one run with two power profiles (sigma_rel 0.05, 0.10) snapshotted"
    echo "   every 20 batches and a constant-decay one; then the EMA of 8 widths rebuilt from"
    echo "   the snapshots, each evaluated (plot: ${DEMO_PLOT:-build/posthoc-sigma.png})"
    EMACLIENT_LIB=$(cd "$build" && pwd)/libemaclient.so PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}" \
        "$python" "$here/python/examples/posthoc_sigma.py" --socket "$sock" \
        --out "${DEMO_PLOT:-$build/posthoc-sigma.png}" ${DEMO_POSTHOC_ARGS:-}
    echo "== emactl posthoc: the same from the command line, sigma_rel 0.08, into a file"
    "$build/emactl" --socket "$sock" posthoc demo-posthoc --sigma-rel 0.08 --out "$dir/ema-0.08.safetensors"
fi

echo
echo "== stopping emad (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
echo "emad exited with status $?; socket removed: $([ -e "$sock" ] && echo no || echo yes)"
pid=""
echo "removing $dir (socket, state directory, emad's log)"
