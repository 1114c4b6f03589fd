"""Export stage: `run` (checkpoint -> ONNX + parity + provenance, `mlpipe-export`), `tensorrt`
(ONNX -> engine), `triton_repo` (model repositories), `triton_python_model` (the python backend)."""
