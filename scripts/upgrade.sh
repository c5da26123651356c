#!/usr/bin/env bash
# Graceful upgrade of a running gateway to a new binary or new listeners, without dropping a
# request: start the new process with -u, wait until it listens on the upgrade socket, then
# SIGQUIT the old one, which hands its listening sockets over and drains.
#
#   scripts/upgrade.sh [CONFIG]          (default conf/gateway.yaml)
#   GATEWAY_BIN=path OLD_PID=pid scripts/upgrade.sh /etc/gateway/gateway.yaml
set -euo pipefail

conf=${1:-conf/gateway.yaml}
bin=${GATEWAY_BIN:-target/release/gateway}
[ -x "$bin" ] || bin=target/debug/gateway

"$bin" -t -c "$conf" >/dev/null
eval "$("$bin" -c "$conf" --print-paths)"
old_pid=${OLD_PID:-$(cat "$pid_file" 2>/dev/null || true)}
if [ -z "$old_pid" ] || ! kill -0 "$old_pid" 2>/dev/null; then
    echo "no running gateway (pid file $pid_file; set OLD_PID)" >&2
    exit 1
fi

rm -f "$upgrade_sock"
# The new process waits on the upgrade socket for the old one's listeners, then daemonizes.
"$bin" -u -d -c "$conf" &
launcher=$!
for _ in $(seq 200); do
    [ -S "$upgrade_sock" ] && break
    sleep 0.05
done
if [ ! -S "$upgrade_sock" ]; then
    echo "the new process did not open $upgrade_sock; the old one keeps serving" >&2
    exit 1
fi

kill -QUIT "$old_pid"
wait "$launcher" || { echo "the new process failed to start; see its log" >&2; exit 1; }
echo "old gateway $old_pid hands over its sockets and drains (up to ${drain_secs}s)"
for _ in $(seq $((drain_secs * 10 + 50))); do
    kill -0 "$old_pid" 2>/dev/null || { echo "upgrade done: $(cat "$pid_file") serves"; exit 0; }
    sleep 0.1
done
echo "old gateway $old_pid still running after ${drain_secs}s" >&2
exit 1
