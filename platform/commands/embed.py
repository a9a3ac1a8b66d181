"""``zeroseg embed``: a split's class embeddings, computed or reused from the cache."""

from __future__ import annotations

import argparse
import json
import sys

from zeroseg.platform.commands.data import command_split
from zeroseg.platform.config import parse_overrides
from zeroseg.platform.embeddings import default_embedding_config, embed_command
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.io import check_writable_dir, check_writable_file


def cmd_embed(args: argparse.Namespace) -> int:
    split = command_split(args.gt, args.benchmark)
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
