#!/usr/bin/env bash
# The cluster's MLflow tracking server on the Ray head: cluster.yaml and cluster-local.yaml start it before
# `ray start --head` and watch it after; `ray down` (its `ray stop`) then ends it too.
#
#   start-mlflow.sh [BOOTSTRAP_CONFIG]   (re)start the server; write ~/.basin.env for `ray start` to export to
#                                        every Ray process on the head, the sweep drivers included:
#                                          MLFLOW_TRACKING_URI=http://<head address>:5000   where trials log
#                                          BASIN_STORAGE=<shared storage>    where relative `results` go
#                                          BASIN_HEAD_IP=<head address>      the address Ray advertises
#   start-mlflow.sh --watch [GCS_PORT]   after `ray start --head --port=GCS_PORT` (default 6379): end the server
#                                        when that Ray head of this user ends
#   start-mlflow.sh --stop               end the server (and its watcher) now
# BOOTSTRAP_CONFIG defaults to ~/ray_bootstrap_config.yaml, the cluster file as `ray up` copies it to the head.
#
# Storage comes from the config's metadata.basin: `storage` (a URI or a shared path) or `bucket`
# (-> s3://<bucket>/basin). Run data lives in SQLite on the head's disk (~/basin-mlflow/mlflow.db: it survives
# `ray down` and a restart), artifacts under <storage>/mlflow. The server binds one address, never 0.0.0.0: the
# head's address in the cluster (provider.head_ip with Ray's local provider, else the head's private IP), which
# workers reach and people reach through an SSH tunnel. Overrides: BASIN_STORAGE, BASIN_MLFLOW_HOST,
# BASIN_MLFLOW_PORT. Every start restarts the server (as `ray up` restarts Ray), so a code change takes effect.
set -euo pipefail

state="$HOME/basin-mlflow"
mkdir -p "$state"
say() { echo "start-mlflow.sh: $*"; }

# End a process group we started (its leader's pid is in FILE) and wait until it is gone.
end_group() {
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "${1:-}" in
  --stop)
    end_group "$state/watcher.pid"
    end_group "$state/server.pid"
    say "stopped"
    exit 0 ;;
  --watch)
    # The head's GCS is this user's gcs_server serving that port (found, not killed, by its command line);
    # when `ray stop` ends it, the watcher ends the server's process group. tail --pid waits without a loop.
    gcs="$(pgrep -u "$(id -u)" -f -- "gcs_server .*--gcs_server_port=${2:-6379}( |\$)" | head -1 || true)"
    if [ -z "$gcs" ] || ! [ -f "$state/server.pid" ]; then
      say "nothing to watch (Ray head or MLflow server not running)" >&2
      exit 1
    fi
    end_group "$state/watcher.pid"
    setsid nohup bash -c "tail --pid=$gcs -f /dev/null; kill -TERM -- -$(cat "$state/server.pid")" \
      > /dev/null 2>&1 < /dev/null &
    echo $! > "$state/watcher.pid"
    say "the server ends with Ray's head (gcs_server pid $gcs)"
    exit 0 ;;
esac

config="${1:-$HOME/ray_bootstrap_config.yaml}"
python="$(command -v python3 || command -v python)"
read -r storage head_ip < <("$python" - "$config" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or {}
meta = (cfg.get("metadata") or {}).get("basin") or {}
storage = str(meta.get("storage") or (f"s3://{meta['bucket']}/basin" if meta.get("bucket") else "")).rstrip("/")
provider = cfg.get("provider") or {}
print(storage or "-", provider.get("head_ip") if provider.get("type") == "local" else "-")
PY
) || { say "cannot read $config (a cluster file: see the error above)" >&2; exit 2; }
storage="${BASIN_STORAGE:-${storage#-}}"
if [ -z "$storage" ]; then
  say "no storage: set metadata.basin.bucket or metadata.basin.storage in $config" >&2
  exit 2
fi
[ "$head_ip" != "-" ] || head_ip="$(hostname -I | awk '{print $1}')"
host="${BASIN_MLFLOW_HOST:-$head_ip}"
port="${BASIN_MLFLOW_PORT:-5000}"
url="http://$host:$port"

printf 'MLFLOW_TRACKING_URI=%s\nBASIN_STORAGE=%s\nBASIN_HEAD_IP=%s\n' "$url" "$storage" "$head_ip" \
  > "$HOME/.basin.env"

end_group "$state/watcher.pid"
end_group "$state/server.pid"
if "$python" -c "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)" \
    "$host" "$port" 2>/dev/null; then
  say "$host:$port is taken by another program: stop it, or set BASIN_MLFLOW_PORT" >&2
  exit 1
fi

# MLflow's background job runner (GenAI evaluation jobs) is not used by sweeps: fewer processes on the head.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# Its own session, so that one signal to the process group ends the server and its workers.
setsid nohup "$(dirname "$python")/mlflow" server \
  --host "$host" --port "$port" --workers 2 \
  --backend-store-uri "sqlite:///$state/mlflow.db" \
  --artifacts-destination "$storage/mlflow" \
  --allowed-hosts "$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*" \
  > "$state/server.log" 2>&1 < /dev/null &
echo $! > "$state/server.pid"

# Wait until it answers, so that the first trials do not race the server's start.
for _ in $(seq 120); do
  if "$python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/health" \
      2>/dev/null; then
    say "MLflow at $url, artifacts in $storage/mlflow"
    exit 0
  fi
  if ! kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
    say "mlflow server exited; see $state/server.log" >&2
    tail -20 "$state/server.log" >&2
    exit 1
  fi
  sleep 1
done
say "MLflow did not answer at $url within 120 s; see $state/server.log" >&2
exit 1
