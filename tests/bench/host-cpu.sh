#!/bin/bash
# Host CPU per acknowledged document, per thread, under the benchmark's load (BENCHMARKS.md,
# issue 23). Usage: tests/bench/host-cpu.sh memory|durable [BIN_DIR]
#   BIN_DIR (default target/release) holds data-exporter, bulk-ack and post-load.
#   RATE=N paces the load at N requests/s (default: closed loop); SEG=BYTES sets
#   queue.segment_bytes; CONNS=N sets the connections (default 64). Ports 6790 (host),
#   6799 (admin) and 6791 (acknowledger) must be free.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=$1; B=${2:-target/release}
SCRATCH=$(mktemp -d); trap 'kill $H $ACK 2>/dev/null; rm -rf "$SCRATCH"' EXIT
python3 - "$SCRATCH/body.json" <<'PY'
import json, sys
checks = [{"id": f"1.2.{i}", "text": "Ensure that the --anonymous-auth argument is set to false",
           "status": "FAIL" if i % 3 == 0 else "PASS", "scored": True} for i in range(12)]
payload = json.dumps({"cluster": "prod-eu-1", "node": "ip-10-0-3-17", "scanner": "kube-bench", "version": "cis-1.8",
                      "time": "2026-11-22T18:00:00Z", "results": checks}, separators=(",", ":"))
body = {"config": {"openSearch": {"host_port": "http://127.0.0.1:6791", "index": "bench", "username": "",
                                  "password": "", "checkCert": False, "mutualTLS": False}}, "payload": payload}
open(sys.argv[1], "w").write(json.dumps(body, separators=(",", ":")))
PY
"$B/bulk-ack" 127.0.0.1:6791 >/dev/null 2>&1 & ACK=$!
DUR=true; [ "$MODE" = memory ] && DUR=false
env DATA_EXPORTER_LOG__FILTER=warn DATA_EXPORTER_RUNTIME__LIMITS__OUTBOUND_ALLOW='["*", "127.0.0.0/8"]' \
  DATA_EXPORTER_QUEUE__DURABLE=$DUR ${SEG:+DATA_EXPORTER_QUEUE__SEGMENT_BYTES=$SEG} \
  "$B/data-exporter" serve --listen 127.0.0.1:6790 --admin-listen 127.0.0.1:6799 \
  --plugins target/plugins --data-dir "$SCRATCH/data" >"$SCRATCH/host.log" 2>&1 & H=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:6790/readyz >/dev/null && break; sleep 0.2; done
snap() { for t in /proc/$H/task/*; do echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
  awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort; }
snap >"$SCRATCH/t0"
"$B/post-load" 127.0.0.1:6790 /forward "$SCRATCH/body.json" 6 ${CONNS:-64} ${RATE:-}
sleep 1.5
snap >"$SCRATCH/t1"
n=$(curl -s 127.0.0.1:6791/_count | tr -dc 0-9)
echo "documents acknowledged: $n"
join "$SCRATCH/t0" "$SCRATCH/t1" | awk -v n="$n" '{d=$3-$2; t+=d; if (d>0) printf "%-20s %6d ticks %7.2f us/doc\n", $1, d, d*10000/n}
  END {printf "%-20s %6d ticks %7.2f us/doc\n", "total", t, t*10000/n}'
