#!/usr/bin/env bash
# The OpenTelemetry Python SDK and its OTLP log exporters (HTTP and gRPC), pinned, in a venv of
# their own: target/otlp-venv. The OTLP tests (host/tests/all/otlp.rs) drive tests/otlp/send.py
# with it. `make test` runs this; run it once by hand before `cargo test --test all otlp::`.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=target/otlp-venv
SDK_VERSION=1.45.2
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('opentelemetry-sdk') != sys.argv[1])" \
  "$SDK_VERSION" 2>/dev/null; then
  exit 0
fi
echo "installing the OpenTelemetry Python SDK $SDK_VERSION into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "opentelemetry-sdk==$SDK_VERSION" \
  "opentelemetry-exporter-otlp-proto-http==$SDK_VERSION" \
  "opentelemetry-exporter-otlp-proto-grpc==$SDK_VERSION"
