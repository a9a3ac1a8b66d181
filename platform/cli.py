"""The ``zeroseg`` command line: the entry point of :mod:`zeroseg.platform.commands`.

Every command has ``--help``; errors a user can cause print one line (``zeroseg: error: ...``)
and exit with status 2 (``--debug`` shows the traceback). The options are declared in
:mod:`~zeroseg.platform.commands.parser`, which imports only argparse; the module that runs a
command (and the libraries it needs) is imported when that command runs, so ``zeroseg data
list`` starts fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from zeroseg.platform.commands.parser import build_parser, command_function
from zeroseg.platform.compat import install_import_hook
from zeroseg.platform.errors import ZerosegError

log = logging.getLogger("zeroseg")

EXIT_USER_ERROR = 2

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    install_import_hook()  # torchvision works in every command, applied at its first import
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return command_function(args)(args)
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
