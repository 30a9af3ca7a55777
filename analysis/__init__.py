"""basin analysis: reads only Parquet results (never MLflow, never checkpoints)."""

from analysis.load import Results, load

__all__ = ["Results", "load"]
