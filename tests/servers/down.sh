#!/usr/bin/env bash
# Stops the test servers tests/servers/up.sh started.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${DX_TEST_STATE:-$ROOT/target/test-servers}
if [ -f "$STATE/nginx/nginx.pid" ]; then kill "$(cat "$STATE/nginx/nginx.pid")" 2>/dev/null; rm -f "$STATE/nginx/nginx.pid"; fi
if [ -f "$STATE/osmem.pid" ]; then kill "$(cat "$STATE/osmem.pid")" 2>/dev/null; rm -f "$STATE/osmem.pid"; fi
exit 0
