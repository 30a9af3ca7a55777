"""Which storage a cluster can share. pyarrow's filesystems do the I/O everywhere (orchestrator.store,
analysis.load), so a results location is a local folder, a shared path (NFS) or a URI (s3://bucket/prefix).
S3 credentials and region come from the usual AWS sources (instance profile, ~/.aws, AWS_* variables);
AWS_ENDPOINT_URL points pyarrow, boto3 and Ray at an S3-compatible server (MinIO, moto) instead of AWS.

On a cluster, BASIN_STORAGE (written by scripts/start-mlflow.sh on the head, exported by `ray start`) names
the shared storage: s3://<bucket>/basin on AWS.
"""

from __future__ import annotations

import os

from orchestrator.sweep import is_uri

STORAGE_ENV = "BASIN_STORAGE"


def is_shared(path: str) -> bool:
    """True when every node of a cluster can reach `path`: an object-store URI, or an absolute path (which
    must then be a mount every node has). Relative paths and file:// URIs name one machine's disk."""
    if is_uri(path):
        return not path.startswith("file://")
    return os.path.isabs(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    """Join onto a local path or a URI, '/'-separated (a URI keeps its `scheme://`)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def cluster_results(storage: str | None = None) -> str | None:
    """The results root of sweeps that do not name a shared one: <storage>/results, where storage defaults
    to $BASIN_STORAGE; None when there is none."""
    storage = os.environ.get(STORAGE_ENV, "") if storage is None else storage
    return join(storage, "results") if storage else None
