"""Checks on quantized models, with onnxruntime and onnx as references.

  quantize_checks.py ort-quantizer SRC DST BLOCK SYMMETRIC
      Quantize SRC with onnxruntime's MatMulNBitsQuantizer (4 bits); prints JSON with its wall time.
  quantize_checks.py check MODEL
      MODEL passes onnx.checker and loads in onnxruntime; prints its opset imports as JSON.
"""
import json
import logging
import sys
import time

import onnx


def ort_quantizer(src, dst, block, symmetric):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    start = time.perf_counter()
    model = onnx.load(src)
    config = DefaultWeightOnlyQuantConfig(block_size=int(block), is_symmetric=symmetric == "true", accuracy_level=None)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(dst, use_external_data_format=False)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def check(path):
    import onnxruntime as ort

    model = onnx.load(path)
    onnx.checker.check_model(model)
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    print(json.dumps({o.domain or "ai.onnx": o.version for o in model.opset_import}))


if __name__ == "__main__":
    if sys.argv[1] == "ort-quantizer":
        ort_quantizer(*sys.argv[2:6])
    elif sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
