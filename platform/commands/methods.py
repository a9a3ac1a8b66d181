"""``zeroseg methods``: the registered methods."""

from __future__ import annotations

import argparse
import json

from zeroseg.methods.registry import registry


def cmd_methods(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "label": s.label, "segmenter": s.segmenter,
             "features": list(s.features), "description": s.description,
             "fixed": dict(s.fixed)} for s in registry().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        fixed = f" [{', '.join(f'{k}={v}' for k, v in r['fixed'].items())}]" if r["fixed"] else ""
        print(f"{r['name']:<{width}}  {r['label']:<11} {r['description']}{fixed}")
    return 0
