"""basin analysis: reads only Parquet results (never MLflow, never checkpoints).

    import analysis
    r = analysis.load("results/quickstart")
    analysis.ensemble_curves(r)            # accuracy/NLL/ECE/Brier against ensemble size, mean ± std
    analysis.robustness_table(r).markdown()
    analysis.best_of_axis(r, "dropout")    # the subspaces paper's "Dropout (best)": picked on validation
    analysis.build_report("results", "report")
    analysis.group_stats(df, ["method", "shape"], "accuracy")  # mean, std, sem, 95% t interval, n per group
    analysis.scorecard(r)                  # the seed papers' claims: paired differences over seeds, verdicts

The analysis functions load on first use, so `import analysis` (or analysis.load) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from analysis.load import Results, load

_LAZY = {
    "ensemble_curves": "analysis.ensembles", "ensemble_values": "analysis.ensembles",
    "robustness_table": "analysis.tables", "calibration_table": "analysis.tables", "mean_std": "analysis.tables",
    "judged_evals": "analysis.tables", "best_of_axis": "analysis.compare", "best_of_table": "analysis.compare",
    "paper_rows": "analysis.compare", "main_points": "analysis.trials", "with_groups": "analysis.trials",
    "alpha_curves": "analysis.landscape", "simplex_grid": "analysis.landscape",
    "weight_similarity": "analysis.diversity", "prediction_disagreement": "analysis.diversity",
    "tsne_trajectories": "analysis.diversity", "accuracy_vs_diversity": "analysis.diversity",
    "reliability_curves": "analysis.calibration", "load_probs": "analysis.predictions",
    "select": "analysis.trials", "build_report": "analysis.report",
    "corruption_table": "analysis.corruptions", "robustness_curves": "analysis.corruptions",
    "cell_maps": "analysis.patterns", "colour_gaps": "analysis.patterns", "gap_curves": "analysis.patterns",
    "group_stats": "analysis.claims", "scorecard": "analysis.claims", "CLAIMS": "analysis.claims",
}

__all__ = ["Results", "load", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
