"""Every ``zeroseg`` subcommand, option and help text, and the command that runs each.

Only argparse is imported here, so ``zeroseg --help`` starts fast: a subcommand names its handler
as ``"MODULE:FUNCTION"`` of :mod:`zeroseg.platform.commands` (``handler`` default), and
:func:`zeroseg.platform.cli.main` imports that module when the command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

HANDLER_PACKAGE = "zeroseg.platform.commands"
#: The tasks in the order tables show them.
TASK_ORDER = ("semantic", "instance", "panoptic", "detection")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroseg",
        description="Zero-shot segmentation experiment platform: data, splits, embeddings, "
                    "training, evaluation (seen / unseen / harmonic mean).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # data ----------------------------------------------------------------------------------
    data = sub.add_parser("data", help="datasets and benchmark splits",
                          description="Generate the synthetic benchmark, list splits, filter "
                                      "training sets.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_sub.add_parser(
        "synth", help="generate the synthetic benchmark in COCO formats",
        description="Write the synthetic zero-shot benchmark (images, instances/panoptic/"
                    "captions json, panoptic and semantic PNGs, classes.json) to OUT. The same "
                    "seed gives byte-identical files.")
    synth.add_argument("--size", required=True, choices=["tiny", "small", "medium", "large"])
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    synth.add_argument("--json", action="store_true", help="print the summary as JSON")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("--variant", choices=["default", "cap2seg"], default="default",
                       help="cap2seg: the caption variant (Cap2Seg's split, ignore-pixels "
                            "protocol, placement priors, position phrases, stripe histograms)")
    synth.set_defaults(handler="data:cmd_data_synth")

    lst = data_sub.add_parser("list", help="print every benchmark split",
                              description="Every registered split with its class counts, "
                                          "tasks and training protocol.")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler="data:cmd_data_list")

    flt = data_sub.add_parser(
        "filter", help="apply a protocol's leakage filter to a training split",
        description="Drop training images with unseen classes (or count the unseen pixels set to "
                    "ignore), write the filtered json files, and print the counts.")
    flt.add_argument("--gt", required=True, help="dataset root (COCO layout)")
    flt.add_argument("--split", default="train", help="dataset split name (default: train)")
    flt.add_argument("--benchmark", help="registry split (default: the dataset's classes.json)")
    flt.add_argument("--protocol", choices=["drop-images", "ignore-pixels"], default=None)
    flt.add_argument("--validation", action="store_true",
                     help="also keep the held-out seen (validation) classes out of training")
    flt.add_argument("--out", help="folder for the filtered json files")
    flt.set_defaults(handler="data:cmd_data_filter")

    cvt = data_sub.add_parser(
        "convert-context", help="mmsegmentation's Pascal-Context PNGs -> ZS3's label ids",
        description="Rewrite mmsegmentation's SegmentationClassContext PNGs (0 background, 1-59 "
                    "alphabetical) with ZS3's label ids (0 background, 1-59 in ZS3's order), "
                    "which the pascal-context/zs3-* splits read.")
    cvt.add_argument("src", help="mmsegmentation's SegmentationClassContext folder")
    cvt.add_argument("out", help="the folder to write (e.g. VOC2010/SegmentationClassContext)")
    cvt.set_defaults(handler="data:cmd_data_convert_context")

    # embed ---------------------------------------------------------------------------------
    emb = sub.add_parser(
        "embed", help="compute (and cache) class embeddings for a split",
        description="Class embeddings from attributes, word2vec, the authors' vector files or "
                    "CLIP, cached on disk by the hash of their inputs.")
    emb.add_argument("--provider", default=None,
                     choices=["attributes", "word2vec", "file", "clip"],
                     help="default: the split's own (the authors' shipped vectors; for "
                          "coco-panoptic/zsp-119-14 word2vec derived through the panoptic "
                          "merge table; attributes for the synthetic benchmark)")
    emb.add_argument("--benchmark", help="registry split name (see `zeroseg data list`)")
    emb.add_argument("--gt", help="dataset root whose classes.json defines the split")
    emb.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="provider option, e.g. --set dim=64 --set path=vectors.bin")
    emb.add_argument("--cache-dir", default=".zeroseg/cache/embeddings")
    emb.add_argument("--out", help="also write the matrix to this .npy (or .csv) file")
    emb.add_argument("--json", action="store_true", help="print the summary as JSON")
    emb.set_defaults(handler="embed:cmd_embed")

    # eval ----------------------------------------------------------------------------------
    ev = sub.add_parser(
        "eval", help="evaluate predictions: seen / unseen / HM",
        description="Evaluate a prediction folder (semantic or panoptic PNGs + json) or a COCO "
                    "results json (instance; detection: its boxes) against a COCO-layout "
                    "dataset.")
    ev.add_argument("task", choices=["semantic", "panoptic", "instance", "detection"],
                    help="detection: ZSD, the instance results json scored on boxes (box IoU)")
    ev.add_argument("--gt", required=True, help="dataset root (COCO layout)")
    ev.add_argument("--split", required=True, help="dataset split, e.g. val")
    ev.add_argument("--pred", required=True, help="prediction folder or results json")
    ev.add_argument("--setting", choices=["gzsl", "zsl"], default="gzsl")
    ev.add_argument("--benchmark", help="registry split (default: the dataset's classes.json)")
    ev.add_argument("--workers", type=int, default=None,
                    help="processes for semantic and panoptic (default: by the data's size)")
    ev.add_argument("--empty-classes", choices=["zero", "exclude"], default=None,
                    help="panoptic: how a class with no TP, FP or FN (absent from both GT and "
                         "predictions) enters the seen / unseen means. zero (default, PADing's "
                         "panoptic_evaluation_gzero.py): it counts as PQ 0; exclude "
                         "(panopticapi's averages): it is left out. They differ on image "
                         "subsets. The choice is printed and recorded in the result")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler="evaluate:cmd_eval")

    # extract -------------------------------------------------------------------------------
    ext = sub.add_parser(
        "extract", help="build (or reuse) the feature cache of a segmenter checkpoint",
        description="Run a segmenter checkpoint over a dataset split once and cache its query "
                    "embeddings (train: matched to GT classes; eval: all queries + mask logits), "
                    "addressed by the hash of checkpoint, dataset, split and extraction config. "
                    "Prints the key, counts, size and whether the cache was built or reused.")
    ext.add_argument("config", help="extraction config YAML (see configs/extract_tiny.yaml)")
    ext.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key, e.g. --set workers=2 --set kind=eval")
    ext.add_argument("--rebuild", action="store_true", help="rebuild even if the cache is valid")
    ext.add_argument("--json", action="store_true", help="print the summary as JSON")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")
    ext.set_defaults(handler="extract:cmd_extract")

    # train ---------------------------------------------------------------------------------
    train = sub.add_parser("train", help="distributed training (Ray Train + DeepSpeed)",
                           description="Train models on Ray Train with DeepSpeed.")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    tseg = train_sub.add_parser(
        "segmenter", help="train the Mask2Former segmenter (seen classes, or all: oracle)",
        description="Train the segmenter on Ray Train workers with DeepSpeed (ZeRO 0-3, fp32 / "
                    "bf16), checkpointing every train.checkpoint_every steps and resuming after "
                    "worker failures; export it to RUN_DIR/segmenter and, with train.eval, print "
                    "and store (RUN_DIR/results.json) seen / unseen / HM for the three tasks.")
    tseg.add_argument("config", help="training config YAML (see configs/segmenter_tiny.yaml)")
    tseg.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a config key, e.g. --set train.steps=20 "
                           "--set distributed.workers=2")
    tseg.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    tseg.add_argument("--json", action="store_true", help="print results.json's content")
    tseg.add_argument("--store", help="results store for the evaluation (default: "
                                      "RUN_DIR/results.db)")
    tseg.add_argument("--quiet", action="store_true", help="no progress display")
    tseg.set_defaults(handler="train:cmd_train_segmenter")

    # run -----------------------------------------------------------------------------------
    run = sub.add_parser(
        "run", help="run an experiment config: every stage a method needs, then the store",
        description="Run every method x seed of CONFIG: dataset, class embeddings, segmenter "
                    "(Ray Train + DeepSpeed), feature cache, the method, inference and "
                    "evaluation of the three tasks; stages whose inputs are unchanged are "
                    "reused, and so are runs already stored (--force re-runs them). Prints seen "
                    "/ unseen / HM (mean +- std over seeds) and writes every run to the results "
                    "store.")
    run.add_argument("config", help="experiment YAML (see configs/pading_small.yaml)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key, e.g. --set params.pading.tau=0.2")
    run.add_argument("--methods", nargs="+", metavar="METHOD", help="replace `methods`")
    run.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="replace `seeds`")
    run.add_argument("--store", help="results store URL or path (default: WORK_DIR/results.db)")
    run.add_argument("--address", help="Ray cluster address for the segmenter training")
    run.add_argument("--force", action="store_true",
                     help="re-run runs already stored (same config, method, seed, protocols "
                          "and code version) and replace them; without it they are reused")
    run.add_argument("--json", action="store_true", help="print the runs as JSON")
    run.add_argument("--smoke", action="store_true",
                     help="every stage at a minute's size (4 segmenter steps, 8 images, 128 px, "
                          "method steps <= 5, one seed) in WORK_DIR/smoke with its own store, "
                          "labelled smoke: check a long config before running it")
    run.set_defaults(handler="run:cmd_run")

    sw = sub.add_parser(
        "sweep", help="hyperparameter sweep: Ray Tune + Optuna (TPE) + ASHA",
        description="Sweep the knobs of SPACE (search_spaces/*.yaml) with Ray Tune, Optuna's "
                    "TPE sampler and ASHA early stopping on the validation objective (held-out "
                    "seen classes as unseen); every trial is written to the results store as it "
                    "runs. Resume an interrupted sweep with --resume NAME.")
    sw.add_argument("space", nargs="?", help="search space YAML (optional with --resume)")
    sw.add_argument("--name", help="sweep name (unique in the store)")
    sw.add_argument("--trials", type=int, default=12, help="number of trials (default 12)")
    sw.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2)")
    sw.add_argument("--address", help="Ray cluster, e.g. ray://HEAD:10001 (default: local)")
    sw.add_argument("--resume", metavar="NAME", help="continue the interrupted sweep NAME")
    sw.add_argument("--config", help="experiment config the trials start from (default: the "
                                     "space's `config`)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a key of the experiment config")
    sw.add_argument("--store", help="results store URL or path")
    sw.add_argument("--searcher", choices=["tpe", "random"], help="override the space's")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0)
    sw.set_defaults(handler="tuning:cmd_sweep")

    rep = sub.add_parser(
        "reproduce", help="re-run a sweep's best configs with several seeds",
        description="Re-run the K best trials of sweep NAME from scratch with S seeds (the "
                    "trial's seed first), reusing every stage whose inputs are unchanged; "
                    "report mean +- std, whether the sweep value lies within the spread and "
                    "whether the trial's seed reproduced it exactly; store the reproductions "
                    "linked to their trial.")
    rep.add_argument("name", help="sweep name")
    rep.add_argument("--top", type=int, default=1)
    rep.add_argument("--seeds", type=int, default=3)
    rep.add_argument("--trial", help="reproduce this trial id instead of the best ones")
    rep.add_argument("--store", help="results store URL or path")
    rep.add_argument("--force", action="store_true",
                     help="re-run reproductions already stored and replace them")
    rep.set_defaults(handler="tuning:cmd_reproduce")

    dash = sub.add_parser(
        "dashboard", help="the Streamlit dashboard on the results store (read-only)",
        description="Serve the dashboard (leaderboard, sweeps, run detail, reproductions) on "
                    "the results store, read-only, bound to 127.0.0.1 unless --host says "
                    "otherwise.")
    dash.add_argument("--store", default=None, help="SQLite file or database URL (default: "
                                                    "$ZEROSEG_STORE or .zeroseg/results.db)")
    dash.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to bind (default 127.0.0.1: this machine only)")
    dash.set_defaults(handler="dashboard:cmd_dashboard")

    meth = sub.add_parser("methods", help="list the registered methods",
                          description="Every method `zeroseg run` and `zeroseg sweep` know.")
    meth.add_argument("--json", action="store_true")
    meth.set_defaults(handler="methods:cmd_methods")

    # demo ----------------------------------------------------------------------------------
    demo = sub.add_parser(
        "demo", help="the main job on the embedded synthetic benchmark (make run)",
        description="Synthetic benchmark -> segmenters (Ray Train + DeepSpeed) -> feature "
                    "caches -> a PADing sweep (Ray Tune + Optuna + ASHA) with the baselines "
                    "beside it -> the best config reproduced with 3 seeds -> leaderboard; "
                    "everything under OUT (results store OUT/results.db). Re-running reuses "
                    "every finished stage.")
    demo.add_argument("--out", default="runs/main", help="run folder (default: runs/main)")
    demo.add_argument("--size", default="small", choices=["tiny", "small"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--trials", type=int, default=12, help="sweep trials (default 12)")
    demo.add_argument("--concurrency", type=int, default=2, help="trials at a time")
    demo.add_argument("--quiet", action="store_true", help="only the stage headers and results")
    demo.set_defaults(handler="demo:cmd_demo")

    # results -------------------------------------------------------------------------------
    _add_results_parser(sub)
    return parser


# -- results --------------------------------------------------------------------------------------
def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None,
                   help="SQLite file or database URL (default: $ZEROSEG_STORE or "
                        ".zeroseg/results.db)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--split", help="benchmark split, e.g. synthetic/default")
    p.add_argument("--kind", choices=["train", "trial", "reproduction", "eval"])
    p.add_argument("--status", choices=["running", "finished", "failed", "stopped"])
    p.add_argument("--sweep", help="sweep name")


def _add_results_parser(sub: Any) -> None:
    """Add ``results`` and its actions to the ``zeroseg`` subcommands."""
    res = sub.add_parser("results", help="the results store: list, show, export runs",
                         description="Runs, metrics and curves recorded in the results store "
                                     "(SQLite file by default, PostgreSQL by URL).")
    res_sub = res.add_subparsers(dest="results_command", required=True, metavar="ACTION")

    lst = res_sub.add_parser(
        "list", help="one line per run with seen / unseen / HM of each task",
        description="Runs, newest first, with the seen / unseen / HM (GZSL) of each task's "
                    "primary metric: mIoU (semantic), mAP50 (instance), PQ (panoptic).")
    _store_arg(lst)
    _filter_args(lst)
    lst.add_argument("--limit", type=int, default=50, help="at most N runs (default 50)")
    lst.add_argument("--eval-split", choices=["val", "test"], default=None,
                     help="metrics of this split (default: test, else val marked *)")
    lst.add_argument("--json", action="store_true", help="print the runs as JSON")
    lst.set_defaults(handler="results:cmd_results_list")

    table = res_sub.add_parser(
        "table", help="PADing-Table-1-style seen / unseen / HM per method, mean +- std",
        description="One row per method, seen / unseen / HM of every task's metrics (ZSS mIoU, "
                    "ZSI mAP@0.5 and Recall@100, ZSP PQ/SQ/RQ) in percent, as mean +- std over "
                    "the finished runs that match the filters (the seeds of an experiment; "
                    "each config and seed counts once: its newest run).")
    _store_arg(table)
    _filter_args(table)
    table.add_argument("--methods", nargs="+", metavar="METHOD",
                       help="these methods, in this order (default: all, in run order)")
    table.add_argument("--eval-split", choices=["val", "test"], default="test",
                       help="test (default) or val: the validation split's held-out classes")
    table.add_argument("--settings", nargs="+", choices=["gzsl", "zsl"], default=["gzsl", "zsl"])
    table.set_defaults(handler="results:cmd_results_table")

    sweeps = res_sub.add_parser(
        "sweeps", help="one line per sweep: method, status, trials, objective",
        description="The sweeps of the store, newest first (`zeroseg reproduce NAME` re-runs "
                    "the best trials of one).")
    _store_arg(sweeps)
    sweeps.add_argument("--json", action="store_true", help="print the sweeps as JSON")
    sweeps.set_defaults(handler="results:cmd_results_sweeps")

    show = res_sub.add_parser(
        "show", help="one run: config, leakage audit, artifacts, metrics",
        description="Everything recorded for one run. RUN is its id or (a unique prefix of) "
                    "its uid.")
    show.add_argument("run", metavar="RUN")
    _store_arg(show)
    show.add_argument("--json", action="store_true", help="print the run as JSON (exact values)")
    show.add_argument("--no-classes", action="store_true", help="hide per-class rows")
    show.set_defaults(handler="results:cmd_results_show")

    exp = res_sub.add_parser(
        "export", help="write the metrics as long-format CSV",
        description="One CSV row per run x task x setting x eval split x subset (x class) x "
                    "metric, with the run's columns; written atomically.")
    exp.add_argument("--csv", required=True, metavar="PATH", help="output CSV file")
    _store_arg(exp)
    _filter_args(exp)
    exp.add_argument("--run", action="append", metavar="RUN", help="only this run (repeatable)")
    exp.add_argument("--task", choices=list(TASK_ORDER))
    exp.add_argument("--setting", choices=["gzsl", "zsl"])
    exp.add_argument("--eval-split", choices=["val", "test"])
    exp.add_argument("--metric", help="only this metric, e.g. iou, pq, ap50")
    exp.add_argument("--no-classes", action="store_true", help="leave out per-class rows")
    exp.set_defaults(handler="results:cmd_results_export")

    mig = res_sub.add_parser(
        "migrate", help="upgrade a store to this zeroseg's schema",
        description="Apply the schema migrations a store written by an older zeroseg needs, "
                    "in one transaction.")
    _store_arg(mig)
    mig.set_defaults(handler="results:cmd_results_migrate")


def command_function(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The function that runs the parsed command (its module is imported now)."""
    module, _, name = args.handler.partition(":")
    return getattr(importlib.import_module(f"{HANDLER_PACKAGE}.{module}"), name)
