"""The subcommands of `fakescope`, one module per group; each exposes ``add(subparsers)``."""

import argparse

from ..scoring import EXPORTS, RUNTIMES


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except where it has none (None): those options'
    help says what unset means, and "(default: None)" after it only contradicted that."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_runtime_option(p) -> None:
    """``--runtime`` as predict, evaluate and serve take it (``scoring/engines.py``)."""
    p.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES + EXPORTS,
        help="what runs the network: auto takes the fastest export of the run that passed its "
        "accuracy check (`fakescope export`), else torch, and says which it took; onnx and "
        "openvino the fastest of theirs; onnx-int8 and the like one export by name",
    )
