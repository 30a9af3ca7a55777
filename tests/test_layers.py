"""The import graph keeps its layers: trainers (the results format at the bottom) <- analysis <- orchestrator.
Analysis reads Parquet and writes report folders only (no orchestrator, MLflow, Ray or torch); trainers know
nothing of Ray, MLflow or the layers above; the results format and the config import no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FORBIDDEN = {
    "analysis": {"orchestrator", "mlflow", "ray", "torch"},
    "trainers": {"orchestrator", "analysis", "mlflow", "ray"},
}
TORCH_FREE = ["trainers.config", "trainers.schema", "trainers.folder", "analysis", "analysis.load",
              "analysis.report", "analysis.predictions", "analysis.tables", "analysis.trials"]


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere (at module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_no_module_imports_a_higher_layer():
    bad = {}
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            hit = imported(path) & forbidden
            if hit:
                bad[str(path.relative_to(ROOT))] = sorted(hit)
    assert not bad, f"imports across layers: {bad}"


def test_results_format_and_analysis_load_without_torch_mlflow_or_the_orchestrator():
    code = ("import importlib, sys\n"
            f"for m in {TORCH_FREE!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'ray', 'orchestrator'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
