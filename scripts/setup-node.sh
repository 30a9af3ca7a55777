#!/usr/bin/env bash
# Set up one node of a basin cluster (cluster.yaml and cluster-local.yaml run it as their setup command, on
# every node, over SSH, as the cluster's user). It needs nothing but a package index:
#   - a Python >= 3.11 already on the machine (never downloaded): BASIN_PYTHON, else the first of python3.11,
#     python3.12, python3.13, python3 on PATH that is new enough;
#   - a virtual environment at ~/basin-env (BASIN_ENV) with basin from ~/basin and the versions pyproject.toml
#     pins, installed by pip from the index pip is configured with: PyPI, or a lab's mirror through pip's own
#     settings (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS, or /etc/pip.conf), docs/cluster.md;
#   - the system's certificate store for TLS (PIP_CERT), so a lab's TLS-inspecting proxy or private CA works;
#   - token auth (RAY_AUTH_MODE=token) and the environment in every login shell, where Ray runs its commands.
#
#   setup-node.sh [SOURCE]    (default ~/basin, where the cluster file mounts the checkout)
#   setup-node.sh --check [STORAGE [ADDRESS PORT ...]]
#                             change nothing; print what this node lacks, one line each (`basin check-cluster`
#                             sends this script over SSH before `ray up`): Python >= 3.11 with venv, rsync, the
#                             shared storage writable, the head's ports free (on 127.0.0.1 and on ADDRESS)
#
# Every step fails where it fails (set -euo pipefail) with one line saying what is missing.
set -euo pipefail

say() { echo "setup-node.sh: $*" >&2; }

# -- Python >= 3.11, found, not fetched ---------------------------------------------------------------------
new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
python=""
for cand in ${BASIN_PYTHON:-} python3.11 python3.12 python3.13 python3; do
  path="$(command -v "$cand" 2>/dev/null)" || continue
  if new_enough "$path"; then python="$path"; break; fi
done
if [ "${1:-}" = "--check" ]; then
  shift
  storage="${1:-}"; [ $# -gt 0 ] && shift
  if [ -z "$python" ]; then
    echo "missing: Python >= 3.11 (apt-get install python3.11 python3.11-venv)"
  elif ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "missing: the venv module of $python (apt-get install python3-venv)"
  else
    echo "ok: $("$python" --version 2>&1) at $python"
  fi
  command -v rsync >/dev/null || echo "missing: rsync (Ray copies the checkout with it: apt-get install rsync)"
  if [ -n "$storage" ] && [ "${storage#*://}" = "$storage" ]; then
    [ -d "$storage" ] && [ -w "$storage" ] || echo "missing: a writable shared storage folder at $storage"
  fi
  address="${1:-127.0.0.1}"; [ $# -gt 0 ] && shift
  for port in "$@"; do  # bash's /dev/tcp: is anything listening there already?
    for host in 127.0.0.1 "$address"; do
      if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then echo "taken: port $port"; break; fi
    done
  done
  exit 0
fi
src="${1:-$HOME/basin}"
env="${BASIN_ENV:-$HOME/basin-env}"

if [ -z "$python" ]; then
  say "no Python >= 3.11 on ${HOSTNAME:-this machine} (looked for ${BASIN_PYTHON:+$BASIN_PYTHON, }python3.11, python3.12," \
      "python3.13, python3 on PATH=$PATH): install one, e.g. apt-get install python3.11 python3.11-venv," \
      "or set BASIN_PYTHON"
  exit 1
fi

# -- TLS: the system's certificate store (pip before 24.2 uses its own bundle, which a lab's CA is not in) --
if [ -z "${PIP_CERT:-}" ]; then
  for bundle in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -r "$bundle" ]; then export PIP_CERT="$bundle"; break; fi
  done
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# -- the environment ----------------------------------------------------------------------------------------
if ! [ -x "$env/bin/python" ] || ! new_enough "$env/bin/python"; then
  if ! "$python" -m venv --clear "$env" 2>/tmp/basin-venv.$$; then
    if grep -q ensurepip /tmp/basin-venv.$$; then
      say "$python cannot make a virtual environment (no ensurepip): install python3-venv (Debian/Ubuntu:" \
          "apt-get install python3.11-venv) on $(hostname)"
    else
      say "$python -m venv $env failed: $(tail -1 /tmp/basin-venv.$$)"
    fi
    rm -f /tmp/basin-venv.$$
    exit 1
  fi
  rm -f /tmp/basin-venv.$$
fi
echo "setup-node.sh: $("$env/bin/python" --version) in $env (from $python)"
# A current pip first: it resolves the pins faster and reads the system store itself (truststore, >= 24.2).
"$env/bin/python" -m pip install --quiet --upgrade "pip>=24.2"
[ -f "$src/pyproject.toml" ] || { say "no basin checkout at $src (the cluster file's file_mounts put it there)"; exit 1; }
start=$SECONDS
"$env/bin/python" -m pip install --quiet "$src" "boto3>=1.34"
"$env/bin/python" -c 'import ray, torch, torchvision, mlflow, orchestrator' \
  || { say "basin's packages do not import in $env (see the error above)"; exit 1; }
echo "setup-node.sh: basin and its pinned packages installed in $((SECONDS - start)) s"

# -- every login shell (Ray's commands, `ray exec`, `ray attach`, jobs) ---------------------------------------
line="source $env/bin/activate; export RAY_AUTH_MODE=token"
grep -qxF "$line" ~/.bashrc 2>/dev/null || echo "$line" >> ~/.bashrc
if [ -f ~/.ray/auth_token ]; then
  chmod 600 ~/.ray/auth_token
else
  say "no ~/.ray/auth_token: run \`ray get-auth-token --generate\` where you run \`ray up\` (file_mounts copy it)"
  exit 1
fi
