#!/usr/bin/env bash
# Start the cluster's MLflow tracking server on the Ray head (cluster.yaml and cluster-local.yaml run it
# before `ray start --head`), then write ~/.basin.env for `ray start` to export to every Ray process on the
# head, the sweep drivers included:
#   MLFLOW_TRACKING_URI=http://<head private IP>:5000   where trials log (workers get the same URI)
#   BASIN_STORAGE=<shared storage>                      where sweeps with relative `results` write
#
#   start-mlflow.sh [BOOTSTRAP_CONFIG]    (default ~/ray_bootstrap_config.yaml, the config `ray up` copies)
#
# Storage comes from the config's metadata.basin: `storage` (a URI or a shared path) or `bucket`
# (-> s3://<bucket>/basin). Run data lives in SQLite on the head's disk, artifacts under <storage>/mlflow.
# The server binds the head's private IP only (never 0.0.0.0): workers reach it inside the security group,
# people through an SSH tunnel. Overrides: BASIN_STORAGE, BASIN_MLFLOW_HOST, BASIN_MLFLOW_PORT.
# Running it again while the server is up only rewrites ~/.basin.env.
set -euo pipefail

config="${1:-$HOME/ray_bootstrap_config.yaml}"
state="$HOME/basin-mlflow"
mkdir -p "$state"

storage="${BASIN_STORAGE:-$(python - "$config" <<'EOF'
import sys, yaml
meta = (yaml.safe_load(open(sys.argv[1])).get("metadata") or {}).get("basin") or {}
if meta.get("storage"):
    print(str(meta["storage"]).rstrip("/"))
elif meta.get("bucket"):
    print(f"s3://{meta['bucket']}/basin")
EOF
)}"
if [ -z "$storage" ]; then
  echo "start-mlflow.sh: no storage: set metadata.basin.bucket or metadata.basin.storage in $config" >&2
  exit 2
fi
host="${BASIN_MLFLOW_HOST:-$(hostname -I | awk '{print $1}')}"
port="${BASIN_MLFLOW_PORT:-5000}"
url="http://$host:$port"

printf 'MLFLOW_TRACKING_URI=%s\nBASIN_STORAGE=%s\n' "$url" "$storage" > "$HOME/.basin.env"

if [ -f "$state/server.pid" ] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
  echo "start-mlflow.sh: MLflow already running at $url (pid $(cat "$state/server.pid"))"
  exit 0
fi

# MLflow's background job runner (GenAI evaluation jobs) is not used by sweeps: fewer processes on the head.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# Its own session, so that one signal to the process group ends the server and its workers.
setsid nohup mlflow server \
  --host "$host" --port "$port" --workers 2 \
  --backend-store-uri "sqlite:///$state/mlflow.db" \
  --artifacts-destination "$storage/mlflow" \
  --allowed-hosts "$host,$host:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*" \
  > "$state/server.log" 2>&1 < /dev/null &
echo $! > "$state/server.pid"

# Wait until it answers, so that the first trials do not race the server's start.
for _ in $(seq 120); do
  if python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url/health" \
      2>/dev/null; then
    echo "start-mlflow.sh: MLflow at $url, artifacts in $storage/mlflow"
    exit 0
  fi
  if ! kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
    echo "start-mlflow.sh: mlflow server exited; see $state/server.log" >&2
    tail -20 "$state/server.log" >&2
    exit 1
  fi
  sleep 1
done
echo "start-mlflow.sh: MLflow did not answer at $url within 120 s; see $state/server.log" >&2
exit 1
