"""onnxruntime's side of `compactor bench quantize`: its MatMulNBitsQuantizer (RTN) on a model,
in both output formats, timed in process (load + quantize + save, median of RUNS).

Usage: ort_quantize.py SRC OUT_DIR BITS BLOCK SYMMETRIC RUNS [FORMAT]
Prints JSON: {"import_seconds": ..., "formats": {"matmulnbits": {"median_seconds", "file"}, "qdq": {...}}}
With COMPACTOR_BENCH_NEW_OUTPUT=1, deletes the previous output before each timed run (outside
the timer). With FORMAT (matmulnbits or qdq), quantizes once in that format: the caller times the whole
process (interpreter start, imports, load, quantize, save) as a user running it would wait.
"""
import json
import logging
import os
import statistics
import sys
import time

start = time.perf_counter()
import onnx  # noqa: E402
from onnxruntime.quantization import QuantFormat  # noqa: E402
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer  # noqa: E402

import_seconds = time.perf_counter() - start
logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)


def main():
    src, out_dir, bits, block, symmetric, runs = sys.argv[1:7]
    only = sys.argv[7] if len(sys.argv) > 7 else None
    new_output = os.environ.get("COMPACTOR_BENCH_NEW_OUTPUT") == "1"
    report = {"import_seconds": import_seconds, "formats": {}}
    for name, fmt in [("matmulnbits", QuantFormat.QOperator), ("qdq", QuantFormat.QDQ)]:
        if only is not None and name != only:
            continue
        out = os.path.join(out_dir, f"ort_{name}.onnx")
        times = []
        for _ in range(int(runs)):
            if new_output and os.path.exists(out):
                os.remove(out)
            t = time.perf_counter()
            model = onnx.load(src)
            config = DefaultWeightOnlyQuantConfig(block_size=int(block), is_symmetric=symmetric == "true", quant_format=fmt, bits=int(bits))
            quantizer = MatMulNBitsQuantizer(model, algo_config=config)
            quantizer.process()
            quantizer.model.save_model_to_file(out, use_external_data_format=False)
            times.append(time.perf_counter() - t)
        report["formats"][name] = {"median_seconds": statistics.median(times), "file": out}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
