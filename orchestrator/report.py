"""``dotsim report``: which variant wins, and how sure we are.

Reads a sweep's ``results.parquet`` (one row per trial and epoch). Per variant: accuracy
and raw cosines as mean and 95% confidence interval over seeds (finished trials only);
each variant against a baseline, paired by seed; for a world-size study, how far each
world size's curve moves from world size 1. Writes ``comparison.png`` beside the results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from orchestrator.sweep import RESULTS_FILE, read_definition

SUMMARY_METRICS = {
    "val_acc_final": "final validation accuracy",
    "val_acc_best": "best validation accuracy",
    "test_acc": "test accuracy (best-validation weights)",
    "train_cos_rec": "raw cos(emb, emb_rec), last epoch",
    "train_cos_shuffled": "raw cos(emb, shuffled rec), last epoch",
    "probe_word_from_formant": "probe: word from emb_formant",
    "probe_speaker_from_residual": "probe: speaker from emb_residual",
    "minutes": "training minutes",
}
ROUND_OFF = 1e-3  # a world size whose curve stays this close to world size 1 "stays put"


def load_results(sweep_dir: Path) -> pd.DataFrame:
    sweep_dir = Path(sweep_dir)
    read_definition(sweep_dir)
    path = sweep_dir / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"{sweep_dir} has no {RESULTS_FILE} yet; run or resume the sweep")
    frame = pd.read_parquet(path)
    if frame.empty:
        raise ValueError(f"{path} has no finished epochs yet")
    return frame


def per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: the summary metrics of its history."""
    rows = []
    for trial, h in frame.sort_values("epoch").groupby("trial", sort=False):
        last = h.iloc[-1]
        rows.append({
            "trial": trial, "variant": last["variant"], "grid": last["grid"],
            "seed": int(last["seed"]), "workers": int(last["workers"]),
            "finished": bool(last["finished"]), "epochs_done": int(last["epoch"]),
            "val_acc_final": last["val_acc"], "val_acc_best": h["val_acc"].max(),
            "test_acc": last.get("test_acc", np.nan),
            "train_cos_rec": last["train_cos_rec"],
            "train_cos_shuffled": last["train_cos_shuffled"],
            "probe_word_from_formant": last.get("probe_word_from_formant", np.nan),
            "probe_speaker_from_residual": last.get("probe_speaker_from_residual", np.nan),
            "minutes": h["epoch_seconds"].sum() / 60,
        })
    return pd.DataFrame(rows)


def mean_ci(values) -> dict:
    """Mean and the half-width of its 95% t-interval (None below two values)."""
    values = np.asarray([v for v in values if not pd.isna(v)], dtype=float)
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = None
    if n >= 2:
        half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return {"mean": float(values.mean()), "ci95": half, "n": n}


def summarise(trials: pd.DataFrame) -> list[dict]:
    """Per variant (and grid point): metrics over the finished seeds."""
    out = []
    for (variant, grid), group in trials.groupby(["variant", "grid"], sort=False):
        done = group[group["finished"]]
        out.append({
            "variant": variant, "grid": json.loads(grid), "seeds": sorted(done["seed"]),
            "stopped_or_unfinished": sorted(group[~group["finished"]]["trial"]),
            **{m: mean_ci(done[m]) for m in SUMMARY_METRICS},
        })
    return out


def paired(trials: pd.DataFrame, baseline: str, metric: str = "test_acc") -> list[dict]:
    """Each variant minus the baseline on the same seeds (and grid point)."""
    done = trials[trials["finished"]]
    out = []
    for (variant, grid), group in done.groupby(["variant", "grid"], sort=False):
        if variant == baseline:
            continue
        base = done[(done["variant"] == baseline) & (done["grid"] == grid)]
        merged = group.merge(base, on="seed", suffixes=("", "_base"))
        diffs = (merged[metric] - merged[f"{metric}_base"]).to_numpy(dtype=float)
        out.append({"variant": variant, "grid": json.loads(grid), "baseline": baseline,
                    "metric": metric, "seeds": sorted(merged["seed"]), **_verdict(diffs)})
    return out


def _verdict(diffs: np.ndarray) -> dict:
    n = len(diffs)
    if n < 2:
        return {"mean_diff": float(diffs.mean()) if n else None, "ci95": None, "p": None,
                "verdict": f"too few paired seeds to tell (n={n}; need >= 2, better >= 5)"}
    ci = mean_ci(diffs)
    if np.allclose(diffs, diffs[0]):
        p = 0.0 if diffs[0] != 0 else 1.0  # a t-test is undefined without spread
    else:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    low, high = ci["mean"] - ci["ci95"], ci["mean"] + ci["ci95"]
    if low > 0:
        verdict = "better than the baseline"
    elif high < 0:
        verdict = "worse than the baseline"
    else:
        verdict = f"no clear difference with {n} seeds (the interval contains 0)"
    return {"mean_diff": ci["mean"], "ci95": ci["ci95"], "p": p, "verdict": verdict}


def world_size_drift(frame: pd.DataFrame) -> list[dict]:
    """Per variant and world size: the largest distance of its per-epoch curves from
    world size 1 (same seed, same epoch)."""
    out = []
    for variant, group in frame.groupby("variant", sort=False):
        ref = group[group["workers"] == 1]
        if ref.empty:
            continue
        for ws, part in group[group["workers"] != 1].groupby("workers"):
            merged = part.merge(ref, on=["seed", "epoch"], suffixes=("", "_ws1"))
            if merged.empty:
                continue
            loss = (merged["train_loss"] - merged["train_loss_ws1"]).abs().max()
            acc = (merged["val_acc"] - merged["val_acc_ws1"]).abs().max()
            out.append({"variant": variant, "world_size": int(ws),
                         "max_abs_diff_train_loss": float(loss),
                         "max_abs_diff_val_acc": float(acc),
                         "verdict": "stays put (round-off)" if loss < ROUND_OFF else "drifts"})
    return out


def build_report(sweep_dir: Path, baseline: str = "cosine") -> dict:
    frame = load_results(sweep_dir)
    trials = per_trial(frame)
    definition = read_definition(sweep_dir)
    if baseline not in set(trials["variant"]):
        baseline = trials["variant"].iloc[0]
    report = {"sweep": str(sweep_dir), "baseline": baseline, "variants": summarise(trials),
              "paired": paired(trials, baseline), "study": definition.get("study")}
    if definition.get("study") == "world-size":
        report["world_size"] = world_size_drift(frame)
    return report


# --- output --------------------------------------------------------------------------


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat["mean"] is None:
        return "-"
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def to_markdown(report: dict) -> str:
    lines = [f"# dotsim report: {report['sweep']}", "",
             "Mean ± 95% confidence half-width over finished seeds.", ""]
    head = ["variant", "grid", "seeds"] + list(SUMMARY_METRICS.values())
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for v in report["variants"]:
        cells = [v["variant"], _grid(v["grid"]), str(len(v["seeds"]))]
        cells += [_fmt(v[m], 2 if m == "minutes" else 3) for m in SUMMARY_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    stopped = [t for v in report["variants"] for t in v["stopped_or_unfinished"]]
    if stopped:
        lines += ["", f"Left out (stopped early or unfinished): {', '.join(stopped)}"]
    lines += ["", f"## Paired by seed against `{report['baseline']}` (test accuracy)", "",
              "| variant | grid | seeds | mean difference | 95% CI | p (paired t) | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p in report["paired"]:
        diff = "-" if p["mean_diff"] is None else f"{p['mean_diff']:+.3f}"
        ci = "-" if p["ci95"] is None else f"± {p['ci95']:.3f}"
        pv = "-" if p["p"] is None else f"{p['p']:.3g}"
        lines.append(f"| {p['variant']} | {_grid(p['grid'])} | {len(p['seeds'])} | {diff} | "
                     f"{ci} | {pv} | {p['verdict']} |")
    if "world_size" in report:
        lines += ["", "## World-size study: distance from world size 1", "",
                  "Same seed and global batch; global statistics should stay put, local drift.",
                  "", "| variant | world size | max abs diff train loss | "
                  "max abs diff val acc | verdict |", "| --- | --- | --- | --- | --- |"]
        for w in report["world_size"]:
            lines.append(f"| {w['variant']} | {w['world_size']} | "
                         f"{w['max_abs_diff_train_loss']:.2e} | {w['max_abs_diff_val_acc']:.3f}"
                         f" | {w['verdict']} |")
    return "\n".join(lines) + "\n"


def _grid(grid: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid.items()) or "-"


def plot(sweep_dir: Path) -> Path:
    """comparison.png: validation accuracy and raw cosines per variant, mean with a
    min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = load_results(sweep_dir)
    fig, (ax_acc, ax_cos) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    groups = frame.groupby(["variant", "grid", "workers"])
    for index, ((variant, grid, workers), group) in enumerate(groups):
        color = f"C{index % 10}"  # one colour per variant in both panels
        label = variant + (f" {_grid(json.loads(grid))}" if grid != "{}" else "")
        if frame["workers"].nunique() > 1:
            label += f" ws={workers}"
        by_epoch = group.groupby("epoch")
        for ax, metric, style in ((ax_acc, "val_acc", "-"), (ax_cos, "train_cos_rec", "-"),
                                  (ax_cos, "train_cos_shuffled", "--")):
            mean = by_epoch[metric].mean()
            ax.plot(mean.index, mean.values, style, color=color,
                    label=label if metric == "val_acc" else None)
            ax.fill_between(mean.index, by_epoch[metric].min(), by_epoch[metric].max(),
                            color=color, alpha=0.15)
    ax_acc.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    ax_cos.set(title="raw cosine: emb vs emb_rec (solid), vs shuffled (dashed)",
               xlabel="epoch", ylabel="cosine")
    for ax in (ax_acc, ax_cos):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize=8)
    out = Path(sweep_dir) / "comparison.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
