"""Plotly figures of the dashboard, built from :mod:`zeroseg.dashboards.data` frames.

Pure functions (frame in, ``plotly.graph_objects.Figure`` out), so tests can check what a chart
holds without a browser. Percentages on every axis, like the papers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from zeroseg.dashboards.data import sweeps

STATUS_COLOURS = {"finished": "#2e7d32", "running": "#1565c0", "stopped": "#ef6c00",
                  "failed": "#c62828"}
ROLE_COLOURS = {"seen": "#1f77b4", "unseen": "#d62728"}


def _layout(fig: go.Figure, title: str, **kwargs: Any) -> go.Figure:
    fig.update_layout(title=title, margin={"l": 40, "r": 20, "t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.2}, **kwargs)
    return fig


def best_so_far(frame: pd.DataFrame, objective: str) -> go.Figure:
    """Each trial's objective (markers coloured by status) and the best so far (line)."""
    fig = go.Figure()
    for status, rows in frame.groupby("status", sort=True):
        fig.add_trace(go.Scatter(
            x=rows["time"], y=rows["objective"], mode="markers", name=f"trial ({status})",
            marker={"color": STATUS_COLOURS.get(str(status), "#757575"), "size": 8},
            text=[f"trial {t}" for t in rows["trial_id"]],
            hovertemplate="%{text}<br>%{y:.1f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["time"], y=frame["best"], mode="lines",
                             line={"shape": "hv", "width": 3, "color": "#000000"},
                             name="best so far"))
    return _layout(fig, f"Best-so-far {objective} over time", yaxis_title=f"{objective} (%)",
                   xaxis_title="trial finished at")


def parallel_coordinates(table: pd.DataFrame, objective: str) -> go.Figure:
    """Knobs vs objective: one line per trial, coloured by the objective."""
    rows = table.dropna(subset=["objective"])
    dims = []
    for column in sweeps.knob_columns(rows):
        values = rows[column]
        name = column.removeprefix("knob:")
        if values.isna().all():
            continue
        if sweeps.is_numeric_knob(values):
            dims.append({"label": name, "values": values.astype(float).to_numpy()})
        else:
            labels = sorted(values.astype(str).unique())
            codes = {v: i for i, v in enumerate(labels)}
            dims.append({"label": name, "values": [codes[v] for v in values.astype(str)],
                         "tickvals": list(range(len(labels))), "ticktext": labels})
    y = (rows["objective"].astype(float) * 100.0).to_numpy()
    dims.append({"label": f"{objective} (%)", "values": y})
    fig = go.Figure(go.Parcoords(
        line={"color": y, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig = _layout(fig, f"Knobs vs {objective} ({len(rows)} trials)")
    fig.update_layout(margin={"l": 60, "r": 40, "t": 100, "b": 40})  # room for axis labels
    return fig


def primitives(by_value: pd.DataFrame, paper: pd.DataFrame, objective: str) -> go.Figure:
    """Our objective against the number of primitives, with PADing's Table 3 beside it (own
    axis: the paper's numbers are unseen PQ on COCO panoptic, ours are this sweep's)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if len(by_value):
        fig.add_trace(go.Scatter(x=by_value["value"], y=by_value["best"], mode="lines+markers",
                                 name=f"ours: best {objective}"), secondary_y=False)
        fig.add_trace(go.Scatter(x=by_value["value"], y=by_value["mean"], mode="lines+markers",
                                 line={"dash": "dot"}, name=f"ours: mean {objective}"),
                      secondary_y=False)
    fig.add_trace(go.Scatter(x=paper["num_primitives"], y=paper["unseen_pq"],
                             mode="lines+markers", line={"color": "#7f7f7f"},
                             name="paper: PADing CVPR 2023, Table 3 (unseen PQ, COCO)"),
                  secondary_y=True)
    fig.update_yaxes(title_text=f"ours: {objective} (%)", secondary_y=False)
    fig.update_yaxes(title_text="paper: unseen PQ (%)", secondary_y=True)
    fig.update_xaxes(title_text="number of primitives")
    return _layout(fig, "HM against the number of primitives (PADing Table 3's shape)")


def knob_effect(table: pd.DataFrame, knob: str, objective: str) -> go.Figure:
    """Objective against one knob: a box per value (categorical) or a scatter (numeric)."""
    column = f"knob:{knob}"
    rows = table.dropna(subset=["objective", column])
    y = rows["objective"].astype(float) * 100.0
    fig = go.Figure()
    if sweeps.is_numeric_knob(rows[column]) and rows[column].nunique() > 6:
        x = rows[column].astype(float)
        for status, part in rows.groupby("status", sort=True):  # one colour per trace: fast
            fig.add_trace(go.Scatter(
                x=part[column].astype(float), y=part["objective"].astype(float) * 100.0,
                mode="markers", name=f"trials ({status})",
                marker={"color": STATUS_COLOURS.get(str(status), "#757575")}))
        positive = x[x > 0]
        if len(positive) == len(x) and len(x) and positive.max() / positive.min() > 50:
            fig.update_xaxes(type="log")
    else:
        fig.add_trace(go.Box(x=rows[column].astype(str), y=y, boxpoints="all", name="trials"))
        fig.update_xaxes(type="category")  # "1,2,4" is a sigma set, not the number 124
    return _layout(fig, f"Effect of {knob}", xaxis_title=knob, yaxis_title=f"{objective} (%)")


def importance(values: dict[str, float], method: str) -> go.Figure:
    names = list(values)[::-1]
    fig = go.Figure(go.Bar(x=[values[n] for n in names], y=names, orientation="h"))
    return _layout(fig, f"Knob importance — {method}", xaxis_title="importance (normalised)")


def trial_curves(curves: pd.DataFrame, labels: dict[int, str], name: str) -> go.Figure:
    fig = go.Figure()
    for run_id, rows in curves.groupby("run_id", sort=True):
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["value"].astype(float) * 100.0,
                                 mode="lines", name=labels.get(int(run_id), str(run_id))))
    return _layout(fig, f"{name} per epoch of each trial", xaxis_title="epoch",
                   yaxis_title=f"{name} (%)")


def per_class(table: pd.DataFrame, metric: str) -> go.Figure:
    fig = go.Figure()
    for role in ("seen", "unseen"):
        rows = table[table["Role"] == role]
        fig.add_trace(go.Bar(x=rows["Class"], y=rows["Value"], name=f"{role} classes",
                             marker={"color": ROLE_COLOURS[role]}))
    return _layout(fig, f"Per-class {metric}", yaxis_title=f"{metric} (%)",
                   xaxis={"tickangle": -45})


def curves(frame: pd.DataFrame) -> go.Figure:
    names = list(dict.fromkeys(frame["curve"]))
    fig = make_subplots(rows=len(names), cols=1, subplot_titles=names, shared_xaxes=False)
    for i, name in enumerate(names, start=1):
        rows = frame[frame["curve"] == name]
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["value"], mode="lines", name=name),
                      row=i, col=1)
    fig.update_layout(height=max(260, 220 * len(names)), showlegend=False,
                      margin={"l": 40, "r": 20, "t": 40, "b": 30})
    return fig


def embeddings(frame: pd.DataFrame) -> go.Figure:
    """PCA of real seen vs synthetic unseen class embeddings (PADing's Figure 5, by PCA)."""
    fig = go.Figure()
    symbols = {"real seen": "circle", "synthetic unseen": "x"}
    for (kind, cls), rows in frame.groupby(["kind", "class"], sort=True):
        fig.add_trace(go.Scatter(x=rows["x"], y=rows["y"], mode="markers",
                                 name=f"{cls} ({kind})", legendgroup=str(kind),
                                 marker={"symbol": symbols.get(str(kind), "circle"), "size": 6,
                                         "opacity": 0.7}))
    explained = frame.attrs.get("explained", [np.nan, np.nan])
    return _layout(fig, "PCA of real seen vs synthetic unseen class embeddings",
                   xaxis_title=f"PC1 ({100 * explained[0]:.0f}% of variance)",
                   yaxis_title=f"PC2 ({100 * explained[1]:.0f}% of variance)", height=520)


def reproductions(seeds: pd.DataFrame, summary: pd.DataFrame) -> go.Figure:
    """Each seed's reproduced value (dots) against the sweep's value (diamond)."""
    fig = go.Figure()
    labels = {int(r["Source run"]): f"{r['Sweep']} / {r['Trial']}"
              for _, r in summary.iterrows()}
    x = [labels.get(int(s), str(s)) for s in seeds["source_run_id"]]
    fig.add_trace(go.Scatter(x=x, y=seeds["value"], mode="markers", name="reproduction seeds",
                             marker={"size": 9},
                             text=[f"seed {s}" for s in seeds["seed"]],
                             hovertemplate="%{text}: %{y:.1f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[labels[int(s)] for s in summary["Source run"]],
                             y=summary["Sweep value"], mode="markers", name="sweep value",
                             marker={"symbol": "diamond", "size": 13, "color": "#000000"}))
    return _layout(fig, "Reproduced seeds vs the sweep's value",
                   yaxis_title="objective (%)", xaxis_title="sweep / trial")
