#!/usr/bin/env bash
# Stops the test servers tests/servers/up.sh started.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${DX_TEST_STATE:-$ROOT/target/test-servers}
if [ -f "$STATE/nginx/nginx.pid" ]; then kill "$(cat "$STATE/nginx/nginx.pid")" 2>/dev/null; rm -f "$STATE/nginx/nginx.pid"; fi
if [ -f "$STATE/osmem.pid" ]; then kill "$(cat "$STATE/osmem.pid")" 2>/dev/null; rm -f "$STATE/osmem.pid"; fi
# tansu drains open client connections for 5 s after SIGTERM, and keeps nothing (memory storage):
# give it 1 s, then SIGKILL, so that its port is free when this returns.
if [ -f "$STATE/tansu.pid" ]; then
  pid=$(cat "$STATE/tansu.pid")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 10); do
      case "$(ps -o stat= -p "$pid" 2>/dev/null)" in ""|Z*) break ;; esac  # gone, or exited (zombie)
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$STATE/tansu.pid"
fi
exit 0
