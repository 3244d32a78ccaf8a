#!/usr/bin/env bash
# Installs the Debian packages the tests need, when missing: `make test` (and tests/servers/up.sh)
# run it first, so the README's two commands are enough on a fresh Debian machine. As root it
# runs apt-get; otherwise through sudo (password-less, or asking at a terminal); else it names the
# command to run and fails. The build's own prerequisites (a Rust toolchain, libssl-dev,
# pkg-config) are the README's.
#
# One line per package: the package apt-get installs, then what shows it is present: a command
# (looked up in PATH, /usr/sbin and /sbin), an absolute path, or `py:MODULE,...` (python3 imports
# them). The suite checks this table against what the tests run (host/tests/all/newcomer.rs:
# every program or file a test uses comes from a package listed here or from one every Debian
# system has), so a test needing a new package fails until it is added here.
set -euo pipefail

# --- packages (keep the format: `package probe`, one per line, between the two markers) ---------
TABLE=$(cat <<'EOF'
# begin packages
python3                 python3
python3-venv            py:venv,ensurepip
openssl                 openssl
curl                    curl
nginx-light             nginx
libnginx-mod-stream     /usr/lib/nginx/modules/ngx_stream_module.so
procps                  /bin/kill
nodejs                  node
npm                     npm
chromium                chromium
chromium-driver         chromedriver
# end packages
EOF
)

present() {
  local probe=$1
  case "$probe" in
    py:*) command -v python3 >/dev/null 2>&1 &&
            python3 -c "import ${probe#py:}" >/dev/null 2>&1 ;;
    /*) [ -e "$probe" ] ;;
    *) command -v "$probe" >/dev/null 2>&1 || [ -x "/usr/sbin/$probe" ] || [ -x "/sbin/$probe" ] ;;
  esac
}

missing=()
while read -r pkg probe; do
  case "$pkg" in ''|'#'*) continue ;; esac
  present "$probe" || missing+=("$pkg")
done <<< "$TABLE"

[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages the tests need: ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: install the equivalents of ${missing[*]} (Debian package names) and run again" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
elif command -v sudo >/dev/null 2>&1 && [ -t 0 ]; then
  SUDO=(sudo)   # a person at a terminal: sudo asks for the password
else
  echo "not root, and sudo would need a password nobody can type here: run \`sudo apt-get install ${missing[*]}\`, then again" >&2
  exit 1
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
still=()
while read -r pkg probe; do
  case "$pkg" in ''|'#'*) continue ;; esac
  present "$probe" || still+=("$pkg ($probe)")
done <<< "$TABLE"
if [ ${#still[@]} -gt 0 ]; then
  echo "still missing after apt-get install: ${still[*]}" >&2
  exit 1
fi
