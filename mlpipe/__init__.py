"""mlpipe: versioned data -> trained model -> ONNX/TensorRT -> Triton -> measured report."""

__version__ = "0.1.0"
