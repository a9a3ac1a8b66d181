"""The command layer: every ``zeroseg`` subcommand's options (:mod:`.parser`) and the function
that runs it (one module per area: :mod:`.data`, :mod:`.embed`, :mod:`.evaluate`,
:mod:`.extract`, :mod:`.train`, :mod:`.run`, :mod:`.tuning`, :mod:`.results`,
:mod:`.dashboard`, :mod:`.demo`).

Argument parsing and printing live here and only here: these modules import the library
packages (data, embeddings, evaluation, features, pipeline, store, training, tuning, methods),
and no library package imports them. :mod:`zeroseg.platform.cli` is the entry point.
"""
