"""Writes valid inputs for a real model, one NAME.npy per input, into OUT_DIR (then 'done').

Usage: make_inputs.py MODEL OUT_DIR
Known models get inputs in their real domain (audio, sample rate, image, bytes); others get
seeded random values of the declared shapes (symbolic dims 3, ints in [0, 10)).
"""
import os
import sys

import numpy as np
import onnx


def main():
    model_path, out = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path, load_external_data=False)
    rng = np.random.default_rng(0)
    inits = {i.name for i in model.graph.initializer}
    name = os.path.basename(model_path)
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        # Exporters write unknown sizes as a name, nothing, or (Paddle) -1.
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        if name.startswith("silero_vad"):
            # 16 kHz audio: 512-sample windows; the recurrent state starts at zero.
            if inp.name == "sr":
                value = np.array(16000, dtype=dtype)
            elif inp.name in ("state", "h", "c"):
                value = np.zeros([d if d is not None else 1 for d in dims], dtype=dtype)
            else:
                value = (rng.standard_normal([d if d is not None else (1 if i == 0 else 512) for i, d in enumerate(dims)]) * 0.1).astype(dtype)
        elif name.startswith("ch_"):
            # OCR: an image batch of one; detection wants multiples of 32, recognition height 48.
            shape = [d if d is not None else {0: 1, 1: 3}.get(i, 64 if "det" in name else (48 if i == 2 else 160)) for i, d in enumerate(dims)]
            value = rng.uniform(-1, 1, size=shape).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 10, size=[d if d is not None else 3 for d in dims]).astype(dtype)
        elif dtype == np.bool_:
            value = rng.integers(0, 2, size=[d if d is not None else 3 for d in dims]).astype(bool)
        else:
            value = rng.standard_normal([d if d is not None else 3 for d in dims]).astype(dtype)
        np.save(os.path.join(out, f"{inp.name}.npy"), value)
    open(os.path.join(out, "done"), "w").close()


if __name__ == "__main__":
    main()
