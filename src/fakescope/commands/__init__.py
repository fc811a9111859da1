"""The subcommands of `fakescope`, one module per group; each exposes ``add(subparsers)``."""

from ..scoring import EXPORTS, RUNTIMES


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
