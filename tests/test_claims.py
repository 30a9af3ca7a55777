"""The claims scorecard (analysis/claims.py): its statistics against a hand-computed paired t interval, its
verdicts on results where the answer is planted (holds, reversed, not shown, cannot be judged and why),
`basin claims` (plain and --json), the report's first section and the table on the sweep's MLflow run.
Real Parquet, written with the trainer's writers (tests/synthetic_results.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic_results import write_study, write_trials

import analysis
from analysis.claims import CANNOT, CLAIMS, HOLDS, NOT_SHOWN, REVERSED, format_text, group_stats, scorecard, verdict
from analysis.report import SECTIONS, build_report
from orchestrator.cli import main

SEED_OFFSET = [0.10, -0.05, 0.08, -0.12, 0.0]   # large between seeds: only pairing sees a 3-point effect
JITTER = [0.004, -0.004, 0.002, -0.002, 0.0]    # small within a pair, mean 0
ECE_NOISE = [0.01, -0.01, 0.02, -0.02, 0.0]     # no effect, only noise


def planted(root: Path, seeds: int = 5, batchnorm: tuple[bool, ...] = (False, True),
            label_noise: tuple[float, ...] = (0.0, 0.2), sign: float = 1.0) -> Path:
    """Standard training, a line (layer-wise and not) and two independent nets, with known effects:
    label noise 0.2: the midpoint is `sign` × 3 points more accurate than standard training; clean: 3 points
    less accurate; ECE: no effect; corrupted: 5 points more accurate; a line has a 0.01 NLL barrier, two
    independent nets a 1.0 one; their ensemble 0.1 lower NLL than its members, equally accurate."""
    trials = []
    for s in range(seeds):
        for bn in batchnorm:
            for noise in label_noise:
                base = dict(seed=s, batchnorm=bn, label_noise=noise)
                off, j = SEED_OFFSET[s] + 0.02 * bn, JITTER[s]
                acc, nll = 0.7 + off, 1.0 - off
                std = [dict(point="point", accuracy=acc, nll=nll, ece=0.05 + off / 10)]
                std += [dict(point="point", corruption="snow", severity=k, accuracy=acc - 0.1 * k, nll=nll)
                        for k in (1, 2)]
                trials.append((dict(base, shape="point"), std))
                effect = 0.03 * sign if noise == 0.2 else -0.03
                for lw in (False, True):
                    centre = dict(point="center", accuracy=acc + effect + j, nll=nll,
                                  ece=0.05 + off / 10 + ECE_NOISE[s] * (-1 if bn else 1))
                    ends = [dict(point=f"endpoint_{i}", accuracy=acc, nll=nll - 0.01) for i in (0, 1)]
                    corrupted = [dict(point="center", corruption="snow", severity=k,
                                      accuracy=acc - 0.1 * k + 0.05 + j, nll=nll) for k in (1, 2)]
                    trials.append((dict(base, shape="line", layerwise=lw), [centre, *ends, *corrupted]))
                ends = [dict(point=f"endpoint_{i}", accuracy=acc, nll=nll) for i in (0, 1)]
                trials.append((dict(base, method="independent", shape="line"), [
                    *ends, dict(point="center", accuracy=0.3, nll=nll + 1.0 + j),
                    dict(point="ensemble_endpoints", accuracy=acc + j, nll=nll - 0.1 + j)]))
    write_trials(root, trials)
    return root


def rows(card: pd.DataFrame, claim: str) -> pd.DataFrame:
    return card[card["claim"] == claim]


# -- statistics -------------------------------------------------------------------------------------------------
def test_group_stats_is_the_hand_computed_paired_t_interval():
    # differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.2910, se 1.2910/2 = 0.6455, t(0.975, 3) = 3.1824,
    # interval 2.5 ± 3.1824 × 0.6455 = [0.446, 4.554]
    (r,) = group_stats(pd.DataFrame({"value": [1.0, 2.0, 3.0, 4.0]})).to_dict("records")
    assert r["n"] == 4 and r["mean"] == 2.5
    assert r["std"] == pytest.approx(1.2910, abs=1e-4) and r["sem"] == pytest.approx(0.6455, abs=1e-4)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.4457, abs=1e-3), pytest.approx(4.5543, abs=1e-3))
    # per group, several values, one call; one value: no interval
    df = pd.DataFrame({"method": ["a"] * 4 + ["b"], "acc": [1.0, 2.0, 3.0, 4.0, 7.0], "nll": [0.0] * 5})
    g = group_stats(df, "method", ["acc", "nll"]).set_index("method")
    assert g.loc["a", "acc_ci_high"] == pytest.approx(4.5543, abs=1e-3) and g.loc["a", "nll_std"] == 0
    assert g.loc["b", "acc_n"] == 1 and np.isnan(g.loc["b", "acc_ci_low"]) and g.loc["b", "acc_mean"] == 7
    assert list(analysis.group_stats(df, ["method"], "acc").columns) == ["method", "mean", "std", "sem", "ci_low",
                                                                         "ci_high", "n"]
    # a 90% interval is narrower (t(0.95, 3) = 2.3534)
    (r90,) = group_stats(pd.DataFrame({"value": [1.0, 2.0, 3.0, 4.0]}), level=0.9).to_dict("records")
    assert r90["ci_low"] == pytest.approx(2.5 - 2.3534 * 0.6455, abs=1e-3)


def test_verdicts_follow_the_interval_and_the_direction():
    assert verdict(0.4, 4.5, "higher") == HOLDS and verdict(0.4, 4.5, "lower") == REVERSED
    assert verdict(-1.0, 2.0, "higher") == NOT_SHOWN and verdict(-3.0, -1.0, "lower") == HOLDS
    assert verdict(np.nan, np.nan, "higher") == CANNOT
    assert verdict(-0.005, 0.004, "close", 0.01) == HOLDS and verdict(0.02, 0.03, "close", 0.01) == REVERSED
    assert verdict(0.0, 0.02, "close", 0.01) == NOT_SHOWN


def test_every_claim_names_its_paper_figure_and_series():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids)) >= 12
    for c in CLAIMS:
        assert c.paper and c.figure and c.text and c.a.where and c.b.where
        assert c.direction in ("higher", "lower", "close") and c.measure in ("test", "corrupted", "barrier",
                                                                              "disagreement")
    assert {c.paper for c in CLAIMS} >= {"Wortsman et al. 2021 (seed 000)", "Skorokhodov & Burtsev (seed 003)"}


# -- verdicts where the answer is known ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return scorecard(str(planted(tmp_path_factory.mktemp("planted"))))


def test_planted_effects_get_their_verdicts(card: pd.DataFrame):
    noise = rows(card, "noise-midpoint")
    assert list(noise["a"]) == ["Line", "Line (layer-wise)"] and set(noise["b"]) == {"Standard training"}
    assert set(noise["verdict"]) == {HOLDS}
    assert list(noise["n"]) == [10, 10] and set(noise["over"]) == {"batchnorm"}  # 5 seeds x 2 batchnorm, paired
    assert noise["mean"].to_numpy() == pytest.approx([0.03, 0.03])
    assert set(rows(card, "clean-accuracy")["verdict"]) == {REVERSED}
    assert set(rows(card, "clean-ece")["verdict"]) == {NOT_SHOWN}                     # noise only
    assert set(rows(card, "ensemble-accuracy")["verdict"]) == {NOT_SHOWN}
    corrupted = rows(card, "corruption-accuracy")
    assert set(corrupted["verdict"]) == {HOLDS} and corrupted["mean"].to_numpy() == pytest.approx([0.05, 0.05])
    barrier = rows(card, "barrier")
    assert set(barrier["verdict"]) == {HOLDS} and barrier["mean"].to_numpy() == pytest.approx([-0.99, -0.99])
    nll = rows(card, "ensemble-nll")
    assert list(nll["verdict"]) == [HOLDS] and nll["mean"].iloc[0] == pytest.approx(-0.1)


def test_what_cannot_be_judged_says_why(card: pd.DataFrame):
    why = {r["claim"]: r["why"] for r in card[card["verdict"] == CANNOT].to_dict("records")}
    assert why["noise-swa"] == "method swa not in the sweep"
    assert why["mimo-accuracy"] == "method mimo not in the sweep"
    assert why["bn-gap"] == "method mpo not in the sweep"
    assert "early_stop" in why["noise-early-stop"]
    assert "save_predictions" in why["diversity"]
    assert not (card.loc[card["verdict"] != CANNOT, "why"] != "").any()


def test_reversed_effect_and_missing_axes(tmp_path: Path):
    card = scorecard(str(planted(tmp_path / "rev", sign=-1.0)), claims=[c for c in CLAIMS if c.id == "noise-midpoint"])
    assert set(card["verdict"]) == {REVERSED} and card["mean"].to_numpy() == pytest.approx([-0.03, -0.03])
    clean = scorecard(str(planted(tmp_path / "clean", label_noise=(0.0,))))
    (r,) = rows(clean, "noise-midpoint").to_dict("records")
    assert r["verdict"] == CANNOT and r["why"] == "no trials with label_noise 0.2 (the sweep has label_noise 0)"
    # one seed and one batchnorm: one pair, no interval
    one = scorecard(str(planted(tmp_path / "one", seeds=1, batchnorm=(False,))))
    assert set(rows(one, "noise-midpoint")["why"]) == {"one pair (n = 1): no interval"}
    assert set(rows(one, "noise-midpoint")["verdict"]) == {CANNOT}


def test_by_gives_one_verdict_per_value(tmp_path: Path):
    card = scorecard(str(planted(tmp_path / "by")), by=["batchnorm"],
                     claims=[c for c in CLAIMS if c.id == "noise-midpoint"])
    assert len(card) == 4 and set(card["n"]) == {5} and set(card["over"]) == {""}
    assert sorted(card["batchnorm"].tolist()) == [False, False, True, True]
    assert "[batchnorm=False]" in format_text(card)


def test_loss_patterns_pair_on_seed_and_mask_and_pool_fills(tmp_path: Path):
    trials = []
    for s in range(2):
        for mask in range(2):
            for fill in (0.3, 0.7):
                for bn in (False, True):
                    gap = (0.3 if bn else 0.5) + 0.01 * (s - mask)
                    black = (0.7 if bn else 0.8) + 0.05 * s - 0.01 * mask
                    trials.append((dict(method="mpo", shape="point", mpo_pattern="random", mpo_size=4, mpo_fill=fill,
                                        mpo_mask_seed=mask, seed=s, batchnorm=bn),
                                   [dict(point="gap", accuracy=gap), dict(point="black", accuracy=black),
                                    dict(point="white", accuracy=black - gap)]))
    write_trials(tmp_path / "mpo", trials)
    card = scorecard(str(tmp_path / "mpo"), claims=[c for c in CLAIMS if c.id.startswith("bn-")]).set_index("claim")
    assert card.loc["bn-gap", "verdict"] == HOLDS and card.loc["bn-gap", "n"] == 8
    assert card.loc["bn-gap", "mean"] == pytest.approx(-0.2) and card.loc["bn-gap", "over"] == "mpo_fill"
    assert card.loc["bn-score", "verdict"] == REVERSED and card.loc["bn-score", "mean"] == pytest.approx(-0.1)


def test_disagreement_is_judged_from_saved_predictions(tmp_path: Path):
    write_study(tmp_path / "fort", variants=("point", "independent"), label_noise=(0.0,), batchnorm=(False,),
                lr=(0.1,), seeds=3)
    (r,) = rows(scorecard(str(tmp_path / "fort")), "diversity").to_dict("records")
    assert r["verdict"] in (HOLDS, NOT_SHOWN, REVERSED) and r["n"] == 3 and -1 <= r["mean"] <= 1
    assert (r["a"], r["b"]) == ("Independent nets", "Samples around standard training")


# -- basin claims, the report, MLflow ----------------------------------------------------------------------------
def test_basin_claims_plain_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    root = planted(tmp_path / "cli")
    assert main(["claims", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["verdict", "n", "A"]
    noise = [line for line in out if "noise-midpoint" in line]
    assert len(noise) == 2 and all(line.startswith("holds") and "+3.00 pp [" in line for line in noise)
    assert any(line.startswith("cannot be judged") and line.endswith("method swa not in the sweep") for line in out)
    assert out[-1].endswith("cannot be judged") and "hold" in out[-1]
    assert main(["claims", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data[0]
    assert first["claim"] == "noise-midpoint" and first["verdict"] == HOLDS and first["n"] == 10
    assert first["ci_low"] > 0 and {"mean", "std", "sem", "ci_high", "paper", "figure", "why"} <= set(first)
    swa = next(d for d in data if d["claim"] == "noise-swa")
    assert swa["verdict"] == CANNOT and swa["mean"] is None
    assert main(["claims", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a results folder" in err[0]


def test_the_scorecard_is_the_reports_first_section(tmp_path: Path):
    root = planted(tmp_path / "rep")
    (rep,) = build_report(str(root), tmp_path / "out")
    first = rep.items[0]
    assert (first.section, first.name, first.kind) == ("claims", "claims", "table") and not first.skipped
    assert "hold" in first.caption and "cannot be judged" in first.caption
    cells = first.table.views[0].cells
    assert list(cells.columns) == ["source", "compared", "n", "A − B (95% CI)", "verdict"]
    assert (rep.folder / "tables" / "claims.csv").exists()
    page = (rep.folder / "index.html").read_text()
    assert page.index("Claims scorecard") < page.index("Main results")
    assert "the midpoint of a line or simplex is more accurate than standard training (pooled over batchnorm)" in page
    assert "background:#d9f2dd" in page and "background:#f8d7da" in page   # holds green, reversed red
    assert "<details><summary>Show the table: Claims" not in page           # open at any length


def test_the_scorecard_is_logged_on_the_sweeps_mlflow_run(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from orchestrator.analyze import CLAIMS_TAG, log_report

    (rep,) = build_report(str(planted(tmp_path / "ml")), tmp_path / "out", sections=[
        s for s in SECTIONS if s.id == "claims"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("planted", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    for _ in range(2):  # logged again (a resumed sweep): replaced, not appended
        log_report(rep.folder, uri, run_id)
    assert {"claims.json", "report"} <= {a.path for a in client.list_artifacts(run_id)}
    table = json.loads(Path(client.download_artifacts(run_id, "claims.json", str(tmp_path / "dl"))).read_text())
    card = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(card) == len(rep.items[0].table.data) and set(card.loc[card["claim"] == "noise-midpoint", "verdict"]) \
        == {HOLDS}
    tags = client.get_run(run_id).data.tags
    assert tags[CLAIMS_TAG].startswith("7 hold") and json.loads(tags["mlflow.loggedArtifacts"]) == [
        {"path": "claims.json", "type": "table"}]
