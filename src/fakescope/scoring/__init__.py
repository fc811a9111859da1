"""Turning images into scores and verdicts: the one scoring path, prediction on files, Grad-CAM."""
