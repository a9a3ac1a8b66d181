"""The ``zeroseg`` command line.

Every command has ``--help``; errors a user can cause print one line (``zeroseg: error: ...``)
and exit with status 2 (``--debug`` shows the traceback). Heavy libraries are imported inside
the command that needs them, so ``zeroseg data list`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.io import check_writable_dir, check_writable_file

log = logging.getLogger("zeroseg")

EXIT_USER_ERROR = 2


# -------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from zeroseg.platform.data.synthetic.generate import SIZES, generate
    from zeroseg.platform.progress import progress_bar

    spec = SIZES.get(args.size)
    total = (spec.train + spec.val) if spec is not None else 0
    with progress_bar(f"synth {args.size}", total, enabled=not args.quiet) as advance:
        summary = generate(args.size, args.seed, args.out, workers=args.workers,
                           overwrite=args.overwrite, progress=advance)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote synthetic benchmark '{args.size}' (seed {args.seed}) to {args.out}")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from zeroseg.platform.data.registry import split_table

    rows = split_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["name", "dataset", "tasks", "protocol", "classes", "seen", "unseen", "val_unseen"]
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"\n{len(rows)} splits. Sources: `zeroseg data list --json` (field 'source').")
    return 0


def _cell(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def cmd_data_filter(args: argparse.Namespace) -> int:
    from zeroseg.platform.data.layout import dataset_layout
    from zeroseg.platform.data.leakage import filter_training

    split = resolve_split(args.gt, args.benchmark)
    layout = dataset_layout(Path(args.gt), args.split, split.dataset)
    result = filter_training(layout, split, protocol=args.protocol, validation=args.validation,
                             out_dir=Path(args.out) if args.out else None)
    report = result.to_dict()
    report.pop("kept_image_ids", None)
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_convert_context(args: argparse.Namespace) -> int:
    from zeroseg.platform.data.voc import convert_mmseg_context

    count = convert_mmseg_context(Path(args.src), Path(args.out))
    print(f"{count} label PNGs rewritten with ZS3's Pascal-Context ids into {args.out}")
    return 0


# -------------------------------------------------------------------------------------------------
# embeddings
# -------------------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    from zeroseg.platform.config import parse_overrides
    from zeroseg.platform.embeddings import default_embedding_config, embed_command

    split = resolve_split(args.gt, args.benchmark)
    if args.provider is None:
        if args.set:
            raise ConfigError("--set: provider options need --provider (without it the split's "
                              "default provider is used as it is)")
        config: dict[str, object] = default_embedding_config(split)
        print(f"provider   {config['provider']} (the default of split {split.name})"
              + "".join(f" {k}={v}" for k, v in config.items() if k != "provider"),
              file=sys.stderr)
    else:
        config = {"provider": args.provider, **parse_overrides(args.set)}
    # Outputs first: an unwritable --out or --cache-dir is one line before anything is computed.
    if args.out:
        check_writable_file(args.out, "embedding matrix (--out)")
    if args.cache_dir:
        check_writable_dir(args.cache_dir, "embedding cache (--cache-dir)")
    summary = embed_command(split, config, cache_dir=args.cache_dir, out_path=args.out)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


# -------------------------------------------------------------------------------------------------
# evaluation
# -------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from zeroseg.platform import evaluation
    from zeroseg.platform.data.layout import dataset_layout

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected a positive number of processes, got "
                          f"{args.workers}")
    split = resolve_split(args.gt, args.benchmark)
    layout = dataset_layout(Path(args.gt), args.split, split.dataset)
    pred = Path(args.pred)
    if args.empty_classes is not None and args.task != "panoptic":
        raise ConfigError(f"--empty-classes: only used by panoptic evaluation, not "
                          f"{args.task}")
    if args.task == "semantic":
        result = evaluation.evaluate_semantic(layout, split, pred, args.setting,
                                              workers=args.workers)
    elif args.task == "panoptic":
        result = evaluation.evaluate_panoptic(layout, split, pred, args.setting,
                                              workers=args.workers,
                                              empty_classes=args.empty_classes or "zero")
    else:
        result = evaluation.evaluate_instance(layout, split, pred, args.setting)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.format_table())
    return 0


def resolve_split(gt: str | None, benchmark: str | None):  # -> Split
    """The split to use: ``--benchmark NAME`` from the registry, else the dataset's classes.json."""
    if benchmark:
        from zeroseg.platform.data.registry import get_split

        return get_split(benchmark)
    if gt:
        from zeroseg.platform.data.layout import CocoLayout
        from zeroseg.platform.data.synthetic.generate import load_classes_json

        path = CocoLayout(Path(gt), "train").classes_json
        if path.is_file():
            return load_classes_json(path)
        raise ZerosegError(
            f"{path}: no classes.json in the dataset; pass --benchmark NAME "
            "(see `zeroseg data list`)"
        )
    raise ZerosegError("--benchmark: required when no dataset folder (--gt) is given")


# -------------------------------------------------------------------------------------------------
# feature cache
# -------------------------------------------------------------------------------------------------
def cmd_extract(args: argparse.Namespace) -> int:
    from zeroseg.platform.config import load_config, parse_overrides
    from zeroseg.platform.features import ExtractConfig, get_features
    from zeroseg.platform.progress import progress_bar

    overrides = parse_overrides(args.set)
    if args.rebuild:
        overrides["rebuild"] = True
    config = load_config(ExtractConfig, args.config, overrides)
    check_writable_dir(config.cache_dir, "feature cache (cache_dir)")
    with progress_bar(f"extract {config.kind}", 0, enabled=not args.quiet) as advance:
        result = get_features(config, progress=advance)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


# -------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------
def cmd_train_segmenter(args: argparse.Namespace) -> int:
    from zeroseg.platform.config import parse_overrides
    from zeroseg.platform.training.command import train_segmenter_command

    return train_segmenter_command(args.config, parse_overrides(args.set), address=args.address,
                                   quiet=args.quiet, json_output=args.json, verbose=args.verbose,
                                   store=args.store)


# -------------------------------------------------------------------------------------------------
# experiments
# -------------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from zeroseg.platform.config import parse_overrides
    from zeroseg.platform.pipeline.command import run_command

    overrides = parse_overrides(args.set)
    if args.methods:
        overrides["methods"] = args.methods
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.store:
        overrides["store"] = args.store
    return run_command(args.config, overrides, json_output=args.json, verbose=args.verbose,
                       address=args.address, force=args.force, smoke=args.smoke)


def cmd_sweep(args: argparse.Namespace) -> int:
    from zeroseg.platform.config import parse_overrides
    from zeroseg.platform.tuning.command import sweep_command

    name = args.name or args.resume
    if not name:
        raise ZerosegError("--name: required (or --resume NAME)")
    return sweep_command(args.space, name=name, trials=args.trials,
                         concurrency=args.concurrency, address=args.address,
                         resume=bool(args.resume), config=args.config,
                         overrides=parse_overrides(args.set), store=args.store,
                         searcher=args.searcher, cpus_per_trial=args.cpus_per_trial,
                         verbose=args.verbose)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from zeroseg.platform.tuning.command import reproduce_command

    return reproduce_command(args.name, top=args.top, seeds=args.seeds, trial=args.trial,
                             store=args.store, force=args.force)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from zeroseg.dashboards.launch import main as dashboard_main

    return dashboard_main(args.store, args.port, args.host)


def cmd_methods(args: argparse.Namespace) -> int:
    from zeroseg.platform.pipeline.command import methods_command

    return methods_command(json_output=args.json)


# -------------------------------------------------------------------------------------------------
# main job
# -------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from zeroseg.platform.demo import run_demo

    run_demo(args.out, size=args.size, seed=args.seed, trials=args.trials,
             concurrency=args.concurrency, quiet=args.quiet)
    return 0


# -------------------------------------------------------------------------------------------------
# parser
# -------------------------------------------------------------------------------------------------
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
    synth.set_defaults(func=cmd_data_synth)

    lst = data_sub.add_parser("list", help="print every benchmark split",
                              description="Every registered split with its class counts, "
                                          "tasks and training protocol.")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_data_list)

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
    flt.set_defaults(func=cmd_data_filter)

    cvt = data_sub.add_parser(
        "convert-context", help="mmsegmentation's Pascal-Context PNGs -> ZS3's label ids",
        description="Rewrite mmsegmentation's SegmentationClassContext PNGs (0 background, 1-59 "
                    "alphabetical) with ZS3's label ids (0 background, 1-59 in ZS3's order), "
                    "which the pascal-context/zs3-* splits read.")
    cvt.add_argument("src", help="mmsegmentation's SegmentationClassContext folder")
    cvt.add_argument("out", help="the folder to write (e.g. VOC2010/SegmentationClassContext)")
    cvt.set_defaults(func=cmd_data_convert_context)

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
    emb.set_defaults(func=cmd_embed)

    # eval ----------------------------------------------------------------------------------
    ev = sub.add_parser(
        "eval", help="evaluate predictions: seen / unseen / HM",
        description="Evaluate a prediction folder (semantic or panoptic PNGs + json) or a COCO "
                    "results json (instance) against a COCO-layout dataset.")
    ev.add_argument("task", choices=["semantic", "panoptic", "instance"])
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
    ev.set_defaults(func=cmd_eval)

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
    ext.set_defaults(func=cmd_extract)

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
    tseg.set_defaults(func=cmd_train_segmenter)

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
    run.set_defaults(func=cmd_run)

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
    sw.set_defaults(func=cmd_sweep)

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
    rep.set_defaults(func=cmd_reproduce)

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
    dash.set_defaults(func=cmd_dashboard)

    meth = sub.add_parser("methods", help="list the registered methods",
                          description="Every method `zeroseg run` and `zeroseg sweep` know.")
    meth.add_argument("--json", action="store_true")
    meth.set_defaults(func=cmd_methods)

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
    demo.set_defaults(func=cmd_demo)

    # results (the results store; commands in platform/store/commands.py) ------------------
    from zeroseg.platform.store.commands import add_results_parser

    add_results_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from zeroseg.platform.compat import install_import_hook

    install_import_hook()  # torchvision works in every command, applied at its first import
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ZerosegError as exc:
        if args.debug:
            raise
        print(f"zeroseg: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # A file system refusal the command's own checks did not foresee (a disk that filled
        # up, a folder that became read-only): still one line naming the path.
        if args.debug or exc.filename is None:
            raise
        print(f"zeroseg: error: {exc.filename}: {exc.strerror or type(exc).__name__}",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("zeroseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
