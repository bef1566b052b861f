#!/usr/bin/env bash
# flowtui quick start. Sets everything up (system packages when missing, a virtualenv with the
# project's Python dependencies) and then runs one job:
#   ./run.sh demo [ARGS...]   the main job: `flowtui demo`
#   ./run.sh test [ARGS...]   the whole test suite: ruff, mypy, pytest (extra ARGS go to pytest)
#   ./run.sh setup            only set up
set -euo pipefail
cd "$(dirname "$0")"

job="${1:-demo}"
[ $# -gt 0 ] && shift

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# System packages: nftables (nft and libnftables), iproute2 (ip netns), ping, conntrack.
missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
ldconfig -p 2>/dev/null | grep 'libnftables\.so\.1' >/dev/null || missing+=(libnftables1)  # no -q: an early exit fails the pipe (pipefail)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
command -v wireguard-go >/dev/null 2>&1 || missing+=(wireguard-go)
command -v wg >/dev/null 2>&1 || missing+=(wireguard-tools)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)  # the etcd datastore's tests run a real etcd
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v strace >/dev/null 2>&1 || missing+=(strace)  # the kill-in-commit test holds the agent at its nft commit
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing system packages (${missing[*]}): install them as root; enforcement tests will skip"
  fi
fi

# Python environment from the project's own files.
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf .venv
    "$PY" -m venv .venv
  fi
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing Python packages (pyproject.toml)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

case "$job" in
  setup) say "ready: activate with 'source .venv/bin/activate'" ;;
  demo) exec flowtui demo "$@" ;;
  test)
    say "ruff"; ruff check .
    say "mypy"; mypy
    say "pytest"; exec python -m pytest -q "$@"
    ;;
  *) echo "usage: ./run.sh demo|test|setup [ARGS...]" >&2; exit 2 ;;
esac
