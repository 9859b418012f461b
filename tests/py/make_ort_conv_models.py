"""Makes the models onnxruntime's own tools produce from convolutional and recurrent models,
with inputs and onnxruntime's outputs for each, for the runtime's regression tests.

Usage: make_ort_conv_models.py MODELS_DIR OUT_DIR

MODELS_DIR is the PyPI models cache (`$COMPACTOR_CACHE/models`). Writes into OUT_DIR, per
case NAME: `NAME.onnx`, `NAME.input.<input>.npy` and `NAME.output.<k>.npy` (onnxruntime's
outputs, every graph optimization off), then `cases.json` ({name: {"model", "inputs",
"outputs"}}) and `done` last.

Cases:
- `quantize_dynamic`: silero-vad's LSTM (com.microsoft DynamicQuantizeLSTM), the PP-OCR
  text direction classifier (ConvInteger, DynamicQuantizeLinear) and magika (MatMulInteger).
- `quantize_static` in QOperator format on the classifier (QLinearConv, QLinearAdd,
  QLinearGlobalAveragePool, QLinearMul, QLinearSigmoid, ... from com.microsoft).
- onnxruntime's offline optimizer at ORT_ENABLE_EXTENDED and ORT_ENABLE_ALL on the
  classifier and the PP-OCR detector (FusedConv, FusedGemm, com.microsoft.nchwc ops).
"""
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def image(rng, n, h, w):
    """Smooth, image-like values normalised like PP-OCR's preprocessing ((x/255 - 0.5) / 0.5)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, 3, h, w), np.float32)
    for b in range(n):
        phase = rng.uniform(0, 6, 3)
        for c in range(3):
            out[b, c] = 0.5 + 0.4 * np.sin(7 * x + phase[c]) * np.cos(5 * y - phase[c])
        out[b] += rng.normal(0, 0.05, (3, h, w))
    return ((np.clip(out, 0, 1) - 0.5) / 0.5).astype(np.float32)


def audio(rng, steps, width):
    t = np.arange(steps * width) / 16000.0
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + rng.normal(0, 0.02, t.shape)
    return wave.reshape(steps, width).astype(np.float32)


def run_ort(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)


class Images(CalibrationDataReader):
    def __init__(self, name, shape, count, seed):
        rng = np.random.default_rng(seed)
        self.batches = iter([{name: image(rng, *shape)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def optimized(src, dst, level):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = level
    options.optimized_model_filepath = dst
    ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def main():
    models, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    cls = os.path.join(models, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    det = os.path.join(models, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
    vad = os.path.join(models, "silero_vad/data/silero_vad_16k_sequence.onnx")
    magika = os.path.join(models, "magika/models/standard_v3_3/model.onnx")
    cls_input = {"x": image(rng, 2, 48, 192)}
    det_input = {"x": image(rng, 1, 96, 128)}
    vad_input = {"input": audio(rng, 8, 576), "h": rng.normal(0, 0.3, (1, 1, 128)).astype(np.float32), "c": rng.normal(0, 0.3, (1, 1, 128)).astype(np.float32)}
    magika_input = {"bytes": rng.integers(0, 257, (2, 2048)).astype(np.int32)}
    cases = {}

    def case(name, make, feeds):
        path = os.path.join(out, name + ".onnx")
        make(path)
        outputs = run_ort(path, feeds)
        record = {"model": path, "inputs": {}, "outputs": []}
        for k, v in feeds.items():
            record["inputs"][k] = os.path.join(out, f"{name}.input.{k}.npy")
            np.save(record["inputs"][k], v)
        for k, v in enumerate(outputs):
            record["outputs"].append(os.path.join(out, f"{name}.output.{k}.npy"))
            np.save(record["outputs"][-1], np.ascontiguousarray(v))
        cases[name] = record

    with tempfile.TemporaryDirectory() as tmp:
        cls_pre = os.path.join(tmp, "cls.pre.onnx")
        quant_pre_process(cls, cls_pre, skip_symbolic_shape=True)
        case("vad_dynamic", lambda p: quantize_dynamic(vad, p, weight_type=QuantType.QInt8), vad_input)
        case("cls_dynamic", lambda p: quantize_dynamic(cls_pre, p, weight_type=QuantType.QUInt8), cls_input)
        case("magika_dynamic", lambda p: quantize_dynamic(magika, p, weight_type=QuantType.QInt8), magika_input)
        case(
            "cls_static_qoperator",
            lambda p: quantize_static(cls_pre, p, Images("x", (1, 48, 192), 8, 1), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8),
            cls_input,
        )
        for level, tag in [(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "extended"), (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "all")]:
            case(f"cls_ort_{tag}", lambda p, level=level: optimized(cls, p, level), cls_input)
            case(f"det_ort_{tag}", lambda p, level=level: optimized(det, p, level), det_input)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
    open(os.path.join(out, "done"), "w").close()


if __name__ == "__main__":
    main()
