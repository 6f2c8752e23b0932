"""Compare segmentation schemes on the same customers: ``segml compare CONFIG --schemes FILE``.

The purchases are read and checked once; every scheme (a part of the
configuration overridden: features, transform, model, naming, quality) is
fitted on the same customers, and two rule-based RFM baselines are scored
beside them (:mod:`segml.schemes`). The table, a plot and one MLflow parent
run (experiment ``<experiment>-compare``) with a child run per scheme are
the result; nothing is published to the CRM.

A schemes file::

    schemes:
      kmeans-rfm: {}                                   # the configuration as it is
      gmm-rfm: {model: {algorithm: gmm, criterion: bic}}
      kmeans-5: {features: [recency_days, frequency, monetary, tenure_days, avg_order_value]}
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.segment import load_purchases
from segml import progress, tracking
from segml.config import SegmlConfig, load_config, parse_config, read_yaml
from segml.errors import ConfigError
from segml.outputs import save_figures, write_csv
from segml.schemes import SCORES, baselines, comparison_table, score_labels
from segml.secrets import mask_config
from segml.segmentation import assess_quality, describe_segments, fit_model

#: What a scheme may override; the data, the window and where results go stay the configuration's.
SCHEME_KEYS = ("features", "transform", "model", "naming", "quality")


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def read_schemes(path: str | Path) -> dict[str, dict]:
    """The schemes of a schemes file: name -> overrides, checked for shape and allowed keys."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), source=str(path))
    except FileNotFoundError:
        raise ConfigError(f"schemes file {str(path)!r} not found") from None
    schemes = raw.get("schemes") if isinstance(raw, dict) else None
    if not isinstance(schemes, dict) or not schemes:
        raise ConfigError(f"{path}: needs a mapping 'schemes:' of scheme names to overrides, e.g. "
                          "schemes: {kmeans: {}, gmm: {model: {algorithm: gmm, criterion: bic}}}")
    for name, overrides in schemes.items():
        if not isinstance(overrides, dict | type(None)):
            raise ConfigError(f"{path}: scheme {name!r} must be a mapping of overrides, got {overrides!r}")
        unknown = sorted(set(overrides or {}) - set(SCHEME_KEYS))
        if unknown:
            raise ConfigError(f"{path}: scheme {name!r} overrides {unknown}; a scheme may override only "
                              f"{list(SCHEME_KEYS)} (the data and outputs stay the configuration's)")
    return {str(name): overrides or {} for name, overrides in schemes.items()}


def scheme_configs(config: SegmlConfig, schemes: dict[str, dict], source: str) -> dict[str, SegmlConfig]:
    """Each scheme's configuration: the base with its overrides, validated (errors name the scheme)."""
    base = config.model_dump(mode="json", exclude_defaults=True)
    return {name: parse_config(_merge(base, overrides), source=f"{source}, scheme {name!r}")
            for name, overrides in schemes.items()}


def write_scheme_config(config_path: str | Path, schemes_path: str | Path, name: str,
                        out: Path | None = None) -> Path:
    """Write scheme ``name`` as a configuration of its own, beside CONFIG (``<stem>.<name>.yaml``),
    ready for ``segml run``: the configuration file as written, with the scheme's overrides merged in."""
    schemes = read_schemes(schemes_path)
    if name not in schemes:
        raise ConfigError(f"no scheme {name!r} in {schemes_path}; the schemes are {sorted(schemes)}")
    config_path = Path(config_path)
    load_config(config_path)  # the base must be valid
    raw = read_yaml(config_path.read_text(encoding="utf-8"), source=str(config_path))
    merged = _merge(raw, schemes[name])
    # Its own name: its own experiment, registered model, output folder and CRM segmentation, so running
    # it never republishes the segmentation the configuration publishes.
    merged = {"name": f"{raw.get('name', config_path.stem)}-{name}", **{k: v for k, v in merged.items() if k != "name"}}
    parse_config(merged, source=f"{schemes_path}, scheme {name!r}")
    target = out or config_path.with_name(f"{config_path.stem}.{name}.yaml")
    target.write_text(f"# {config_path.name} with scheme {name!r} of {Path(schemes_path).name}\n"
                      + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


@task(cache_policy=NO_CACHE)
def fit_scheme(features: pd.DataFrame, config: SegmlConfig, future: pd.DataFrame | None) -> dict[str, Any]:
    """Fit one scheme and score it: in its own space and in the common one."""
    model, candidates = fit_model(features, config)
    scored = assess_quality(model, candidates, features, config)
    m = scored.metrics
    scores = score_labels(features, scored.labels, future, config.model.silhouette_sample,
                          config.model.random_state)
    scores.update(homogeneity=m["homogeneity"], explained_variance=m["explained_variance"],
                  silhouette=m["silhouette"], stability_ari=m["stability_ari"])
    segments = describe_segments(features, scored, config)
    return {"model": model, "candidates": candidates, "scored": scored, "scores": scores, "segments": segments}


@flow(name="compare-schemes", log_prints=False,
      flow_run_name="compare {schemes} as of {as_of}")
def compare_schemes(config: str | Path, schemes: str | Path, as_of: dt.date | None = None) -> dict[str, Any]:
    """Fit every scheme of ``schemes`` on the same customers and compare them with the RFM baselines."""
    from segml.forward import future_outcomes, horizon_closed
    from segml.plots import plot_comparison, plot_k_selection, plot_segment_sizes, plot_snake

    logger = get_run_logger()
    config_path = Path(config)
    cfg = load_config(config_path)
    configs = scheme_configs(cfg, read_schemes(schemes), str(schemes))
    progress.step("reading and checking the purchases")
    with tempfile.TemporaryDirectory(prefix="segml-compare-") as tmp:
        purchases = load_purchases(cfg, as_of, str(config_path), Path(tmp) / "rejected.csv")
    r = purchases.report
    features = purchases.features.sort_index()
    horizon = cfg.quality.forward_horizon_days
    future = None
    if horizon_closed(r.last_valid_purchase, r.as_of, horizon):
        progress.step(f"reading what customers bought in the {horizon} days after {r.as_of}")
        future = future_outcomes(cfg, r.as_of, horizon, str(config_path))
    fitted, rows, kinds = {}, {}, {}
    for name, scheme in configs.items():
        progress.step(f"fitting scheme {name}")
        fitted[name] = fit_scheme(features, scheme, future)
        rows[name], kinds[name] = fitted[name]["scores"], "scheme"
    k = Counter(int(f["model"].n_segments) for f in fitted.values()).most_common(1)[0][0]
    for name, (_, scores) in baselines(features, k, future).items():
        rows[name], kinds[name] = scores, "baseline"
    table = comparison_table(rows, kinds)

    progress.step("recording the comparison")
    folder = Path(cfg.output.dir) / cfg.name / "compare" / str(r.as_of)
    write_csv(table, folder / "comparison.csv")
    save_figures(folder, {"comparison": plot_comparison(table)})
    experiment = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"experiment": f"{cfg.experiment_name}-compare"})})
    handle = tracking.start_run(experiment, run_name=f"{cfg.name}: {len(configs)} schemes as of {r.as_of}")
    tracking.set_tags(handle.uri, handle.run_id, {"segml.as_of": r.as_of.isoformat(), "segml.schemes": str(schemes),
                                                  "mlflow.note.content": _markdown(table, r.as_of, horizon, future)})
    tracking.log_params_and_metrics(handle, {"as_of": r.as_of.isoformat(), "schemes": ",".join(configs),
                                             "input_fingerprint": r.fingerprint, "baseline_k": str(k)}, {})
    tracking.log_artifacts(handle, folder)
    for name, result in fitted.items():
        child = tracking.start_child(handle, name)
        params = tracking.flatten(mask_config(configs[name].model_dump(mode="json",
                                                                       include=set(("features", "transform", "model")))))
        tracking.log_params_and_metrics(child, {k: v for k, v in params.items() if v != ""}, result["scores"])
        with tempfile.TemporaryDirectory(prefix="segml-scheme-") as tmp:
            stage = Path(tmp)
            write_csv(result["segments"], stage / "segments.csv")
            write_csv(result["candidates"], stage / "candidates.csv")
            scored = result["scored"]
            save_figures(stage / "plots", {
                "segment_sizes": plot_segment_sizes(result["segments"]),
                "snake_plot": plot_snake(scored.space, scored.labels, result["segments"], result["model"].features),
                "k_selection": plot_k_selection(result["candidates"], configs[name].model.criterion,
                                                configs[name].model.min_segment_share)})
            tracking.log_artifacts(child, stage)
        tracking.end_run(child)
    tracking.end_run(handle)
    create_table_artifact(key=f"compare-{cfg.name}".lower().replace("_", "-"),
                          table=_artifact_rows(table),
                          description=f"Schemes of {cfg.name} compared as of {r.as_of} (MLflow run {handle.run_id})")
    logger.info("compared %d schemes and 2 baselines; table in %s", len(configs), folder)
    return {"as_of": r.as_of.isoformat(), "customers": len(features), "run_id": handle.run_id,
            "experiment": f"{cfg.experiment_name}-compare", "output_dir": str(folder),
            "forward_days": horizon if future is not None else None, "table": table.to_dict(orient="records")}


def _artifact_rows(table: pd.DataFrame) -> list[dict]:
    rows = []
    for record in table.to_dict(orient="records"):
        row = {"scheme": record["scheme"], "kind": record["kind"], "k": int(record["k"])}
        for score in SCORES:
            if score in record and pd.notna(record[score]):
                row[score] = f"{record[score]:.3f}" + (" *" if record.get(f"best_{score}") else "")
        rows.append(row)
    return rows


def _markdown(table: pd.DataFrame, as_of: dt.date, horizon: int, future: pd.DataFrame | None) -> str:
    columns = [c for c in SCORES if c in table]
    lines = [f"Schemes compared as of {as_of}; best of each column marked *. Homogeneity_common: every scheme "
             "in the baseline's space (log(1 + x) of recency, frequency and monetary, standardised). "
             + (f"Forward validity over the {horizon} days after the as-of date." if future is not None
                else "No forward validity: the data do not reach past the as-of date."), "",
             "| scheme | kind | k | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for record in table.to_dict(orient="records"):
        cells = [f"{record[c]:.3f}" + ("*" if record.get(f"best_{c}") else "") if pd.notna(record[c]) else ""
                 for c in columns]
        lines.append(f"| {record['scheme']} | {record['kind']} | {int(record['k'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
