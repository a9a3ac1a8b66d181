"""``zeroseg extract``: build (or reuse) a segmenter checkpoint's feature cache."""

from __future__ import annotations

import argparse
import json

from zeroseg.platform.config import load_config, parse_overrides
from zeroseg.platform.features import ExtractConfig, get_features
from zeroseg.platform.io import check_writable_dir
from zeroseg.platform.progress import progress_bar


def cmd_extract(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    if args.rebuild:
        overrides["rebuild"] = True
    config = load_config(ExtractConfig, args.config, overrides)
    check_writable_dir(config.cache_dir, "feature cache (cache_dir)")
    with progress_bar(f"extract {config.kind}", 0, enabled=not args.quiet) as advance:
        result = get_features(config, progress=advance)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0
