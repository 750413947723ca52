"""``dotsim report``: which variant wins, and how sure we are.

Reads a sweep's ``results.parquet`` (one row per trial and epoch, with each trial's
status). Per variant: the summary metrics as mean and 95% t-interval over its finished
seeds (and, from stats.BOOTSTRAP_MIN_SEEDS seeds, that variant's own percentile bootstrap
interval). Each variant against a baseline on every comparison metric, paired by seed:
the mean per-seed difference with its t-interval (and bootstrap interval of the
differences, from as many seeds), the probability of beating the baseline on a seed, and
the smallest difference the seeds could detect. One metric is primary (the protocol's
first comparison metric, or a race's metric) and carries the decision: a paired t-test
with Holm's correction across the variants compared, or, for a race, the race's decision
(``report_race``); the others are descriptive. Then the trials left out, by why (failed,
stopped early, unfinished); under the FSKIL protocol, every session's accuracies and the
plain log-mel baseline; for a world-size study, how far each world size's curve moves
from world size 1. Writes ``comparison.png`` (and ``sessions.png`` under FSKIL) beside
the results.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd

from orchestrator import report_race, stats
from orchestrator.estimate import duration
from orchestrator.results import load_results, read_definition, read_timing
from workers import storage
from workers.errors import InputError
from workers.metrics import (
    COMPARISON_METRIC,
    FSKIL_HEADLINE,
    FSKIL_KINDS,
    LOGMEL_HEADLINE,
    comparison_metrics,
    session_metric,
)

SUMMARY_METRICS = {
    "val_acc_final": "final validation accuracy",
    "val_acc_best": "best validation accuracy",
    COMPARISON_METRIC: "test accuracy (best-validation weights)",
    "train_cos_rec": "raw cos(emb, emb_rec), last epoch",
    "train_cos_shuffled": "raw cos(emb, shuffled rec), last epoch",
    "probe_word_from_formant": "probe: word from emb_formant",
    "probe_speaker_from_residual": "probe: speaker from emb_residual",
    "minutes": "training minutes",
}
FSKIL_METRICS = dict(zip(FSKIL_HEADLINE, ("accuracy, mean over sessions",
                                          "last-session accuracy", "last-session harmonic mean"),
                         strict=True))
LOGMEL_BASELINE = "log-mel baseline (no training)"
# A difference worth knowing about, in the units of an accuracy: one point.
DIFFERENCE_OF_INTEREST = 0.01
ROUND_OFF = 1e-3  # a world size whose curve stays this close to world size 1 "stays put"
LEFT_OUT = {"ERROR": "failed", "STOPPED": "stopped early by the scheduler",
            "UNFINISHED": "unfinished"}


def per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: its status, error and the summary metrics of its history (and
    every final metric, such as each FSKIL session's accuracies, as it was reported)."""
    finals = list(dict.fromkeys([*FSKIL_HEADLINE, *LOGMEL_HEADLINE, *(
        c for c in frame.columns if c.startswith(("fskil_", "logmel_")))]))
    rows = []
    for trial, h in frame.sort_values("epoch").groupby("trial", sort=False):
        last, epochs = h.iloc[-1], h.dropna(subset=["epoch"])
        row = {"trial": trial, "variant": last["variant"], "grid": last["grid"],
               "seed": int(last["seed"]), "workers": int(last["workers"]),
               "status": last["status"], "error": last.get("error"),
               "epochs_done": len(epochs), **dict.fromkeys([*SUMMARY_METRICS, *finals], np.nan)}
        if len(epochs):
            final = epochs.iloc[-1]
            row |= {"val_acc_final": final["val_acc"], "val_acc_best": epochs["val_acc"].max(),
                    "train_cos_rec": final["train_cos_rec"],
                    "train_cos_shuffled": final["train_cos_shuffled"],
                    "minutes": epochs["epoch_seconds"].sum() / 60,
                    **{m: final.get(m, np.nan) for m in (COMPARISON_METRIC, *finals,
                       "probe_word_from_formant", "probe_speaker_from_residual")}}
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(trials: pd.DataFrame, protocol: str = "standard") -> list[dict]:
    """Per variant (and grid point): the metrics over its finished seeds; under FSKIL the
    protocol's headline numbers too, and a last row for the log-mel baseline."""
    metrics = {**SUMMARY_METRICS, **(FSKIL_METRICS if protocol == "fskil" else {})}
    out = []
    for (variant, grid), group in trials.groupby(["variant", "grid"], sort=False):
        done = group[group["status"] == "FINISHED"]
        out.append({
            "variant": variant, "grid": json.loads(grid), "seeds": sorted(done["seed"]),
            **{m: _interval(done[m]) for m in metrics},
        })
    if protocol == "fskil":
        for grid, seeds in _baseline_seeds(trials):
            out.append({"variant": LOGMEL_BASELINE, "grid": json.loads(grid),
                        "seeds": sorted(seeds["seed"]),
                        **{m: _interval(seeds[b]) for m, b in zip(FSKIL_HEADLINE,
                                                                   LOGMEL_HEADLINE,
                                                                   strict=True)}})
    return out


def _baseline_seeds(trials: pd.DataFrame):
    """Per grid point, one finished trial per seed: the log-mel baseline depends only on
    the seed's shot draws (and the grid's protocol sizes), not on the variant."""
    done = trials[trials["status"] == "FINISHED"].drop_duplicates(["grid", "seed"])
    return done.groupby("grid", sort=False)


def sessions(trials: pd.DataFrame, protocol: str) -> list[dict]:
    """FSKIL: per variant (and grid point), each session's four accuracies over its
    finished seeds, then the plain log-mel baseline's (the same for every variant up to
    the shots each seed draws: it is averaged over all finished trials)."""
    done = trials[trials["status"] == "FINISHED"]
    count = sum(1 for c in trials.columns if c.startswith("fskil_s") and c.endswith("_overall"))
    if protocol != "fskil" or not count:
        return []

    def table(group, source):
        return [{"session": s, **{kind: _interval(group.get(session_metric(s, kind, source),
                                                            pd.Series(dtype=float)))
                                 for kind in FSKIL_KINDS}} for s in range(count)]

    out = [{"variant": variant, "grid": json.loads(grid), "sessions": table(group, "fskil")}
           for (variant, grid), group in done.groupby(["variant", "grid"], sort=False)]
    out += [{"variant": LOGMEL_BASELINE, "grid": json.loads(grid),
             "sessions": table(seeds, "logmel")} for grid, seeds in _baseline_seeds(trials)]
    return out


def _interval(values) -> dict:
    t = stats.mean_ci(values)
    return {"mean": t["mean"], "ci95": t["half_width"], "n": t["n"],
            "bootstrap95": stats.bootstrap_ci(values)}


def left_out(trials: pd.DataFrame) -> dict[str, list[dict]]:
    """The trials outside the intervals, by why: failed (with the error's last line),
    stopped early by the scheduler, unfinished."""
    out = {}
    for status, why in LEFT_OUT.items():
        chosen = trials[trials["status"] == status]
        out[why] = [{"trial": t.trial, "epochs_done": int(t.epochs_done),
                     **({"error": t.error} if status == "ERROR" else {})}
                    for t in chosen.itertuples()]
    return out


PRIMARY, DESCRIPTIVE = "primary", "descriptive"


def paired(trials: pd.DataFrame, baseline: str, metric: str = COMPARISON_METRIC, *,
           role: str = PRIMARY, pairs: list | None = None,
           decisions: dict | None = None) -> list[dict]:
    """Each variant minus the baseline on the same seeds, per ``pairs`` of (variant, grid)
    keys (default: every variant against the baseline at its own grid point).

    On the primary metric, a paired t-test with Holm's correction across the variants
    compared, and a verdict; for a race, ``decisions`` (by key) instead, and no p-value (a
    fixed-n test is not valid after stopping on the data). A descriptive metric has
    neither: its estimates and intervals only.
    """
    done = trials[trials["status"] == "FINISHED"]
    if pairs is None:
        keys = dict.fromkeys(zip(done["variant"], done["grid"], strict=True))
        pairs = [(key, (baseline, key[1])) for key in keys if key[0] != baseline]
    out = [_pair_row(done, key, base, metric, role) for key, base in pairs]
    if role == DESCRIPTIVE:
        for row in out:
            row |= {"p": None, "p_holm": None,
                    **({"decision": None} if decisions is not None else {"verdict": None})}
    elif decisions is not None:
        for row in out:
            row |= {"p": None, "p_holm": None,
                    "decision": decisions[(row["variant"], json.dumps(row["grid"]))]}
    else:
        for row, p_holm in zip(out, stats.holm([row["p"] for row in out]), strict=True):
            row["p_holm"] = p_holm
            row["verdict"] = _verdict(row)
    return out


def _pair_row(done: pd.DataFrame, key: tuple, base: tuple, metric: str, role: str) -> dict:
    column = report_race.column(metric)
    mine = done[(done["variant"] == key[0]) & (done["grid"] == key[1])]
    theirs = done[(done["variant"] == base[0]) & (done["grid"] == base[1])]
    merged = mine.merge(theirs, on="seed", suffixes=("", "_base"))
    diffs = (merged[column] - merged[f"{column}_base"]).to_numpy(dtype=float)
    test = stats.paired_test(diffs)
    better = stats.probability_of_improvement(diffs)
    return {"variant": key[0], "grid": json.loads(key[1]), "baseline": base[0],
            "baseline_grid": json.loads(base[1]), "metric": metric, "role": role,
            "seeds": sorted(int(s) for s in merged["seed"][~np.isnan(diffs)]), **test,
            "p_improvement": better["estimate"], "p_improvement_ci": better["interval"],
            "power": stats.power_sentence(test["n"], test["sd"] or 0.0,
                                          DIFFERENCE_OF_INTEREST)}


def _verdict(row: dict) -> str:
    if row["note"]:
        return row["note"]
    if row["p_holm"] < 0.05:
        side = "better" if row["mean_diff"] > 0 else "worse"
        return f"{side} than the baseline (Holm-corrected p < 0.05)"
    return f"no clear difference with {row['n']} seeds"


def choose_baseline(trials: pd.DataFrame, baseline: str | None) -> str:
    """The asked-for baseline, which must be a variant of the sweep; by default cosine,
    else the sweep's first variant."""
    variants = list(dict.fromkeys(trials["variant"]))
    if baseline is None:
        return "cosine" if "cosine" in variants else variants[0]
    if baseline not in variants:
        raise InputError(f"--baseline {baseline!r} is not a variant of this sweep; its "
                         f"variants: {', '.join(variants)}")
    return baseline


def world_size_drift(frame: pd.DataFrame) -> list[dict]:
    """Per variant and world size: the largest distance of its per-epoch curves from
    world size 1 (same seed, same epoch)."""
    out = []
    frame = frame.dropna(subset=["epoch"])
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


def build_report(sweep_dir: str, baseline: str | None = None) -> dict:
    frame = load_results(sweep_dir)
    trials = per_trial(frame)
    definition = read_definition(sweep_dir)
    protocol = definition.get("base", {}).get("protocol", "standard")
    spec = report_race.race_spec(definition)
    if spec is None:
        baseline, primary = choose_baseline(trials, baseline), comparison_metrics(protocol)[0]
        race, pairs, decided = None, None, None
    else:
        keys = report_race.arm_keys(spec, definition.get("base", {}))
        baseline, primary = report_race.check_baseline(keys, baseline), spec.metric
        race = report_race.build(trials, spec, keys)
        pairs = [(key, keys[0]) for key in keys[1:]]
        decided = {(d["variant"], json.dumps(d["grid"])): d["decision"]
                   for d in race["decisions"]}
    metrics = list(dict.fromkeys([primary, *comparison_metrics(protocol)]))
    compared = [row for m in metrics for row in paired(
        trials, baseline, m, role=PRIMARY if m == primary else DESCRIPTIVE, pairs=pairs,
        decisions=decided)]
    report = {"sweep": sweep_dir, "protocol": protocol, "baseline": baseline,
              "metrics": metrics, "primary_metric": primary,
              "bootstrap_min_seeds": stats.BOOTSTRAP_MIN_SEEDS,
              "variants": summarise(trials, protocol), "left_out": left_out(trials),
              "paired": compared, "sessions": sessions(trials, protocol),
              "study": definition.get("study")}
    if race is not None:
        report["race"] = race
    if definition.get("study") == "world-size":
        report["world_size"] = world_size_drift(frame)
    if (timing := read_timing(sweep_dir)) is not None:
        report["time"] = {"estimate": timing.get("estimate"), "seconds": timing["seconds"],
                          "sessions": len(timing["sessions"])}
    return report


def make(sweep_dir: str, baseline: str | None = None, with_plots: bool = True) -> dict:
    """The report of a sweep, with its plots written beside the results."""
    result = build_report(sweep_dir, baseline=baseline)
    if with_plots:
        result["plot"] = plot(result)
        if sessions := plot_sessions(result):
            result["sessions_plot"] = sessions
    return result


# --- output --------------------------------------------------------------------------


def _fmt(stat: dict, digits: int = 3, *, bootstrap: bool = False) -> str:
    """``mean ± t half-width``, and with ``bootstrap`` the bootstrap interval after it."""
    if stat["mean"] is None:
        return "-"
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f}"
    text = f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"
    if bootstrap and stat.get("bootstrap95") is not None:
        low, high = stat["bootstrap95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _fmt_range(pair, digits: int = 3) -> str:
    return "-" if pair is None else f"[{pair[0]:+.{digits}f}, {pair[1]:+.{digits}f}]"


def _fmt_p(p) -> str:
    return "-" if p is None else f"{p:.3g}"


def to_markdown(report: dict) -> str:
    compared = {report_race.column(m) for m in report.get("metrics", ())}
    lines = [f"# dotsim report: {report['sweep']}", ""]
    if "race" in report:
        lines += [*report_race.markdown(report["race"]), ""]
    if "time" in report:
        lines += [_time_line(report["time"]), ""]
    lines += ["Mean ± 95% t half-width over each variant's finished seeds; for the metrics "
              "compared, that variant's own 95% percentile bootstrap interval of the mean in "
              "brackets (not paired: the paired comparison is below)."
              + _bootstrap_note(report, [v[m] for v in report["variants"] for m in compared
                                         if m in v]), ""]
    trained = [v for v in report["variants"] if v["variant"] != LOGMEL_BASELINE]
    lines += _table(trained, SUMMARY_METRICS, compared)
    if report.get("protocol") == "fskil":
        lines += ["", "## FSKIL headline numbers", "",
                  "Mean ± 95% t half-width over seeds [95% bootstrap interval, where shown]; "
                  "the log-mel baseline is the same protocol with no training (prototypes of "
                  "time-averaged log-mel spectrograms as prepared).", ""]
        lines += _table(report["variants"], FSKIL_METRICS, compared)
    lines += _left_out_lines(report["left_out"])
    lines += _paired_lines(report)
    if report.get("sessions"):
        lines += _session_lines(report["sessions"])
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


def _time_line(time: dict) -> str:
    """The time the sweep took beside the estimate printed when it started."""
    took = "not yet ended" if time["seconds"] is None else duration(time["seconds"])
    sessions = f" over {time['sessions']} sessions" if time["sessions"] > 1 else ""
    estimate = time.get("estimate") or {}
    if not estimate.get("seconds"):
        return (f"Time: {took}{sessions}; no estimate when it started (no earlier run of "
                "its config in the storage).")
    said = ", ".join(f"{label} {duration(s)}".strip()
                     for label, s in estimate["seconds"].items())
    return (f"Time: {took}{sessions}; estimated when it started: {said} (a trial about "
            f"{duration(estimate['trial_seconds'])}, from {estimate['runs']} earlier "
            f"run{'s' if estimate['runs'] != 1 else ''}).")


def _bootstrap_note(report: dict, counts: list) -> str:
    """" Bootstrap shown from N seeds: ..." when some interval of ``counts`` (stats with an
    "n", or numbers of seeds) has none for want of seeds; else nothing."""
    least = report.get("bootstrap_min_seeds", stats.BOOTSTRAP_MIN_SEEDS)
    seeds = [c["n"] if isinstance(c, dict) else c for c in counts]
    if not any(2 <= n < least for n in seeds):
        return ""
    note = stats.bootstrap_note(least)
    return f" {note[0].upper()}{note[1:]}."


def _table(variants: list[dict], metrics: dict[str, str],
           compared: set[str] = frozenset()) -> list[str]:
    head = ["variant", "grid", "seeds", *metrics.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for v in variants:
        cells = [v["variant"], _grid(v["grid"]), str(len(v["seeds"]))]
        cells += [_fmt(v[m], 2 if m == "minutes" else 3, bootstrap=m in compared)
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paired_lines(report: dict) -> list[str]:
    rows, race = report["paired"], "race" in report
    primary = report.get("primary_metric", (report.get("metrics") or [None])[0])
    if race:
        rule = (f"The primary metric, `{primary}`, is decided by the race (see Decisions); "
                "no p-value is shown, for a fixed-n test is not valid after stopping on the "
                "data.")
    else:
        rule = (f"Verdicts rest on one primary metric, `{primary}`: p from a paired t-test, "
                "Holm-corrected across the variants compared.")
    head = ["metric", "role", "variant", "grid", "seeds", "mean difference", "95% t CI",
            "95% bootstrap", "P(higher on a seed) [95% CI]",
            *(["decision"] if race else ["p", "p (Holm)", "verdict"]),
            "what these seeds can tell"]
    lines = ["", f"## Paired by seed against `{report['baseline']}`", "",
             "Each variant minus the baseline on the same seeds. " + rule
             + (" The other metrics are descriptive: estimates and intervals, no test and no "
                "verdict." if any(p.get("role") == DESCRIPTIVE for p in rows) else "")
             + " P(higher on a seed): the share of seeds on which the variant beats the "
             "baseline (a tie counts 1/2), with its Clopper-Pearson interval (at least 95% "
             "coverage at any number of seeds)."
             + _bootstrap_note(report, [p["n"] for p in rows]), "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(_paired_cells(p, race)) + " |" for p in rows]
    return lines


def _paired_cells(p: dict, race: bool) -> list[str]:
    role = p.get("role", PRIMARY)
    descriptive = role == DESCRIPTIVE
    cells = [p["metric"], role, p["variant"], _grid(p["grid"]), str(len(p["seeds"])),
             "-" if p["mean_diff"] is None else f"{p['mean_diff']:+.3f}",
             "-" if p["half_width"] is None else f"± {p['half_width']:.3f}",
             _fmt_range(p["bootstrap_ci"]), _fmt_improvement(p)]
    if race:
        cells.append("descriptive: no decision" if descriptive else p["decision"])
    else:
        cells += [_fmt_p(p["p"]), _fmt_p(p["p_holm"]),
                  "descriptive: no verdict" if descriptive else p["verdict"]]
    return [*cells, p["power"]]


def _fmt_improvement(p: dict) -> str:
    if p.get("p_improvement") is None:
        return "-"
    low, high = p["p_improvement_ci"]
    return f"{p['p_improvement']:.2f} [{low:.2f}, {high:.2f}]"


def _session_lines(table: list[dict]) -> list[str]:
    count = len(table[0]["sessions"])
    lines = ["", "## FSKIL sessions", "",
             "Accuracy on every word seen so far after each session (0: the base words); seen "
             "and unseen are mean per-class accuracies over the base and the new words, "
             "harmonic their harmonic mean. Mean ± 95% t half-width over finished seeds.", "",
             "| variant | grid | accuracy | " + " | ".join(f"session {s}" for s in range(count))
             + " |", "|" + " --- |" * (3 + count)]
    for v in table:
        for kind in FSKIL_KINDS:
            cells = [_fmt(s[kind]) for s in v["sessions"]]
            lines.append(f"| {v['variant']} | {_grid(v['grid'])} | {kind} | "
                         + " | ".join(cells) + " |")
    return lines


def _left_out_lines(left: dict[str, list[dict]]) -> list[str]:
    lines = []
    for why, trials in left.items():
        if not trials:
            continue
        lines += ["", f"Left out, {why}:"]
        for t in trials:
            error = f": {t['error']}" if "error" in t else ""
            lines.append(f"- {t['trial']} ({t['epochs_done']} epochs){error}")
    return lines


def _grid(grid: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid.items()) or "-"


def colours(report: dict) -> dict[str, str]:
    """One colour per variant (and grid point) for every plot of a report, in the
    report's order of variants; the log-mel baseline is grey."""
    labels = list(dict.fromkeys(_label(v["variant"], v["grid"]) for v in report["variants"]
                                if v["variant"] != LOGMEL_BASELINE))
    return {label: f"C{i % 10}" for i, label in enumerate(labels)} | {LOGMEL_BASELINE: "0.4"}


def _label(variant: str, grid: dict) -> str:
    return variant + (f" {_grid(grid)}" if grid else "")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparison_figure(frame: pd.DataFrame, colour: dict[str, str]):
    """Validation accuracy and raw cosines per variant, mean with a min-max band over
    seeds; world sizes of a study told apart by their markers."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    frame = frame.dropna(subset=["epoch"])
    fig, (ax_acc, ax_cos) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    studies = frame["workers"].nunique() > 1
    sizes = sorted(frame["workers"].unique())
    for (variant, grid, workers), group in frame.groupby(["variant", "grid", "workers"]):
        label = _label(variant, json.loads(grid))
        color = colour.get(label, "k")
        marker = "osD^v<>"[sizes.index(workers) % 7] if studies else None
        if studies:
            label += f" ws={workers}"
        by_epoch = group.groupby("epoch")
        for ax, metric, style in ((ax_acc, "val_acc", "-"), (ax_cos, "train_cos_rec", "-"),
                                  (ax_cos, "train_cos_shuffled", "--")):
            mean = by_epoch[metric].mean()
            ax.plot(mean.index, mean.values, style, color=color, marker=marker,
                    label=label if metric == "val_acc" else None)
            ax.fill_between(mean.index, by_epoch[metric].min(), by_epoch[metric].max(),
                            color=color, alpha=0.15)
    ax_acc.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    ax_cos.set(title="raw cosine: emb vs emb_rec (solid), vs shuffled (dashed)",
               xlabel="epoch", ylabel="cosine")
    for ax in (ax_acc, ax_cos):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(frame):
        ax_acc.legend(fontsize=8)
    return fig


def sessions_figure(report: dict, colour: dict[str, str]):
    """Accuracy after each session, one line per variant with its 95% t band over seeds,
    and the plain log-mel baseline dashed (FSKIL only)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for v in report["sessions"]:
        baseline = v["variant"] == LOGMEL_BASELINE
        points = [(s["session"], s["overall"]) for s in v["sessions"]
                  if s["overall"]["mean"] is not None]
        if not points:
            continue
        x = np.array([p[0] for p in points])
        mean = np.array([p[1]["mean"] for p in points])
        half = np.array([p[1]["ci95"] or 0.0 for p in points])
        label = _label(v["variant"], v["grid"])
        color = colour[LOGMEL_BASELINE] if baseline else colour.get(label, "k")
        ax.plot(x, mean, "--" if baseline else "-o", color=color, label=label)
        ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.15)
    ax.set(title="FSKIL: accuracy on all words seen so far", xlabel="session",
           ylabel="accuracy")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot(report: dict) -> str:
    """comparison.png beside the results (``comparison_figure``)."""
    figure = comparison_figure(load_results(report["sweep"]), colours(report))
    return _save(figure, storage.join(report["sweep"], "comparison.png"))


def plot_sessions(report: dict) -> str | None:
    """sessions.png beside the results under FSKIL (``sessions_figure``), else None."""
    if not report.get("sessions"):
        return None
    figure = sessions_figure(report, colours(report))
    return _save(figure, storage.join(report["sweep"], "sessions.png"))


def _save(fig, location: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes(location, buffer.getvalue())
    return location
