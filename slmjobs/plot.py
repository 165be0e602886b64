"""`slmjobs plot`: one metric of one or more runs over steps, tokens or training hours, as a PNG.

Reads only files: each run's metrics history (through slmjobs.history.current_history, so a
step trained twice after a hard kill counts once) and its ledger (how each link ended). Draws
with matplotlib's Agg canvas, imported here and only here: no display, no torch, works on a
login node.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmjobs import evals, events, ledger, rundir
from slmjobs.errors import UsageError
from slmjobs.history import current_history

# metric -> (record event, field, axis label); train metrics also show their validation points
METRICS = {
    "loss": ("train", "loss", "loss (nats/token)"),
    "val_loss": ("eval", "val_loss", "validation loss (nats/token)"),
    "bits_per_byte": ("train", "bits_per_byte", "bits per byte"),
    "lr": ("train", "lr", "learning rate"),
    "tokens_per_sec": ("train", "tokens_per_sec", "tokens/s"),
    "hellaswag": ("hellaswag", "acc_norm", "HellaSwag acc_norm (lm-eval 0.4.13 scoring, 0-shot)"),
}
VALIDATION_OF = {"loss": "val_loss", "bits_per_byte": "val_bits_per_byte"}
X_AXES = {
    "step": ("step", 1.0, "step"),
    "tokens": ("tokens", 1.0, "tokens seen"),
    "hours": ("train_seconds", 1 / 3600,
              "training hours (queue waits, link start-up and evaluation not counted)"),
}
# how a link ended (the ledger's `ended` event) -> line style and legend text of the boundary
# drawn where the next link resumed
BOUNDARY_STYLES = {
    events.HANDED_OFF: ("--", "planned hand-off"),
    events.KILLED: ("-", "hard kill (steps since the checkpoint trained again)"),
    events.CRASHED: ("-.", "crash"),
    events.CANCELLED: (":", "cancelled, resumed"),
}
UNKNOWN_BOUNDARY = (":", "restart (how the link ended is not in the ledger)")
# tab10 without its red and grey, so that every run's colour stays apart from the text
RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
              "#17becf"]
FIGSIZE, DPI = (10, 5.5), 100


def check_choices(metric: str, x: str) -> None:
    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: unknown; allowed: {', '.join(METRICS)}")
    if x not in X_AXES:
        raise UsageError(f"--x {x}: unknown; allowed: {', '.join(X_AXES)}")


def has_history(path: Path) -> bool:
    return os.path.isfile(rundir.history_path(path))


def series(records: list[dict], event: str, field: str, x: str) -> tuple[list, list]:
    """(xs, ys) of one field of one kind of record, skipping records without either."""
    key, scale, _ = X_AXES[x]
    points = [(r[key] * scale, r[field]) for r in records
              if r.get("event") == event and isinstance(r.get(key), (int, float))
              and isinstance(r.get(field), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def link_boundaries(run_dir, records: list[dict]) -> list[tuple[dict, str | None]]:
    """(start record, how the previous link ended) for every link after the run's first:
    `how` from the ledger's `ended` event of link N-1, None when the ledger does not say
    (a run trained without the launcher)."""
    how_by_link = {link: e.get("how") for link, e in events.ended_links(ledger.read(run_dir)).items()}
    boundaries, trained_before = [], False
    for record in records:
        if record.get("event") == "start" and trained_before:
            link = record.get("link")
            boundaries.append((record, how_by_link.get(link - 1) if isinstance(link, int) else None))
        trained_before = trained_before or record.get("event") in ("train", "eval")
    return boundaries


def load_histories(run_dirs, metric: str) -> list[tuple[Path, list[dict]]]:
    """Each run's current history; a run without any value of `metric` yet is an error."""
    event, field, _ = METRICS[metric]
    loaded = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        records = current_history(run_dir)
        if event == evals.TASK:  # scored during training, then by eval runs after it
            records = records + evals.scored_points(run_dir)
        if not any(r.get("event") == event and isinstance(r.get(field), (int, float))
                   for r in records):
            what = "no metrics history yet" if not records else f"no {metric} values yet"
            raise UsageError(f"run {run_dir.name}: {what} ({rundir.history_path(run_dir)}); "
                             f"the trainer writes it from the run's first logged step")
        loaded.append((run_dir, records))
    return loaded


def plot(run_dirs, metric: str = "loss", x: str = "step", output=None) -> Path:
    """Write the PNG (default: the first run's plots/<metric>.png) and return its path."""
    check_choices(metric, x)
    if output is not None and Path(output).suffix.lower() != ".png":
        raise UsageError(f"-o {output}: allowed: a path ending in .png")
    histories = load_histories(run_dirs, metric)
    figure = draw(histories, metric, x)
    path = Path(output) if output is not None else rundir.plot_path(histories[0][0], metric)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)  # a reader never sees half a PNG
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the plot there ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def reference_lines(axes, histories) -> list:
    """The published HellaSwag acc_norm of each plotted run's preset (slmjobs.evals), dotted."""
    lines = []
    for preset in dict.fromkeys(rundir.run_summary(run_dir).get("model") for run_dir, _ in histories):
        reference = evals.HELLASWAG_REFERENCES.get(preset)
        if reference:
            lines.append(axes.axhline(reference["acc_norm"], color="0.25", linestyle=(0, (1, 2)), linewidth=1.2,
                                      label=f"{reference['model']}: {reference['acc_norm']} (lm-eval)"))
    return lines


def draw(histories: list[tuple[Path, list[dict]]], metric: str, x: str):
    """The matplotlib Figure: a line per run, its validation points as markers, a thin
    vertical line (in the run's colour, styled by how the link ended) at every link boundary."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    event, field, y_label = METRICS[metric]
    x_key, x_scale, x_label = X_AXES[x]
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    handles, boundary_kinds, has_validation = [], {}, False
    for i, (run_dir, records) in enumerate(histories):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        xs, ys = series(records, event, field, x)
        style = dict(marker="o", markersize=4) if event in ("eval", evals.TASK) else {}
        handles += axes.plot(xs, ys, color=color, linewidth=1.2, label=run_dir.name, **style)
        validation = VALIDATION_OF.get(metric)
        if validation:
            vx, vy = series(records, "eval", validation, x)
            if vx:
                axes.plot(vx, vy, linestyle="none", marker="o", markersize=5, color=color,
                          markeredgecolor="black", markeredgewidth=0.6)
                has_validation = True
        for record, how in link_boundaries(run_dir, records):
            if isinstance(record.get(x_key), (int, float)):
                linestyle, text = BOUNDARY_STYLES.get(how, UNKNOWN_BOUNDARY)
                axes.axvline(record[x_key] * x_scale, color=color, linestyle=linestyle,
                             linewidth=0.9, alpha=0.8)
                boundary_kinds[text] = linestyle
    if metric == "hellaswag":
        handles += reference_lines(axes, histories)
    if has_validation:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5, color="white",
                              markeredgecolor="black", label="validation"))
    handles += [Line2D([], [], color="0.3", linestyle=linestyle, linewidth=0.9, label=text)
                for text, linestyle in boundary_kinds.items()]
    axes.legend(handles=handles, fontsize="small", loc="best")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    if metric == "lr":
        axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes.grid(True, linewidth=0.3, alpha=0.5)
    axes.set_title(f"{metric}: {', '.join(run_dir.name for run_dir, _ in histories)}",
                   fontsize="medium")
    figure.tight_layout()
    return figure
