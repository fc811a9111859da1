"""Turning images into scores and verdicts: the one scoring path, prediction on files, Grad-CAM."""

# what --runtime accepts (scoring/engines.py), here so the command line needs no torch import
RUNTIMES = ("auto", "torch", "onnx", "openvino")
EXPORTS = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")  # one export by name
