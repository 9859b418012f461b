"""Checks models written by Compactor against the originals with the onnx package.

Usage: check_roundtrip.py LISTFILE
LISTFILE holds lines "original<TAB>written". For each pair: the written model must pass
onnx.checker when the original does (some real files do not: an onnxruntime-optimized model
may use an op newer than its opset import) and be equal, as a protobuf message, to the original.
Prints one line per failure and exits 1 if there is any.
"""
import sys

import onnx


def main() -> int:
    failures = 0
    pairs = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
    for original, written in pairs:
        try:
            try:
                onnx.checker.check_model(original, full_check=False)
                original_valid = True
            except onnx.checker.ValidationError:
                original_valid = False
            if original_valid:
                onnx.checker.check_model(written, full_check=False)
            a = onnx.load(original, load_external_data=False)
            b = onnx.load(written, load_external_data=False)
            if a != b:
                raise AssertionError("differs from the original as a protobuf message")
        except Exception as e:  # report every failure, not only the first
            failures += 1
            print(f"FAIL {written}: {type(e).__name__}: {str(e)[:300]}")
    print(f"checked {len(pairs)} models, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
