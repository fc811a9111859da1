"""fakescope: deepfake detection of face images with a fine-tuned CNN.

The Python API mirrors the command line; a notebook calls the same functions::

    from fakescope import TrainConfig, train, evaluate, Predictor
    run = train(TrainConfig(data="../shared/data/sg-ffhq", backbone="mobilenet_v2"))
    metrics = evaluate(run, "../shared/data/sg-ffhq", split="test")
    Predictor(run).predict(["photo.jpg"])

Imports are lazy so that ``import fakescope`` stays cheap (no torch at import time).
"""

__version__ = "0.1.0"

_API = {
    "TrainConfig": "fakescope.config",
    "train": "fakescope.training.loop",
    "combine_runs": "fakescope.training.ensemble",
    "evaluate": "fakescope.evaluation.evaluator",
    "Predictor": "fakescope.scoring.predictor",
    "export_run": "fakescope.scoring.export",
    "load_run": "fakescope.runs",
}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fakescope' has no attribute {name!r}")


__all__ = list(_API)
