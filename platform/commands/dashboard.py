"""``zeroseg dashboard``: the Streamlit dashboard on a results store, read-only."""

from __future__ import annotations

import argparse

from zeroseg.dashboards import launch


def cmd_dashboard(args: argparse.Namespace) -> int:
    return launch.main(args.store, args.port, args.host)
