"""Channel pruning on a CNN: PP-OCRv4 text recognition (rapidocr-rec, CTC over 6625 characters)
reading lines of real English prose rendered as images, at several kept widths and scores.

For each `prune-channels(keep=K,score=S)` model: the share of output timesteps whose top-1
character agrees with the unpruned model, the character accuracy of the decoded lines against
the true text (the unpruned model's included), size, and latency of one line in both runtimes
(`compactor bench runtime`, 2 threads) next to the unpruned model's, measured in the same run.

The text is Alice's Adventures in Wonderland (the Brotli sdist's test copy, fetched by the
test-data script): lines of the second half are evaluated; `score=activation` (and with it
compensation of the cut channels' mean into the next layer's bias) calibrates on 64 lines of
the first half. The other scores read the weights only.
Rendering needs Pillow, which this script installs into the test venv when it is missing.

    .cache/venv/bin/python benches/channels_cnn.py [--lines 128] [--runs 20]
"""

import argparse
import json
import os
import subprocess
import sys
import tarfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
HEIGHT, WIDTH = 48, 320


def pillow():
    try:
        import PIL  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pillow"], check=True)


def text_lines(cache, count, half, max_chars=22):
    """Lines of at most `max_chars` characters from the first (calibration) or second
    (evaluation) half of the book."""
    with tarfile.open(os.path.join(cache, "sdists", "Brotli-1.1.0.tar.gz")) as tar:
        text = tar.extractfile("Brotli-1.1.0/tests/testdata/alice29.txt").read().decode("latin-1")
    words = (text[len(text) // 2:] if half == "second" else text[: len(text) // 2]).split()
    lines, line = [], ""
    for w in words:
        if len(line) + 1 + len(w) > max_chars:
            if line:
                lines.append(line)
            line = w[:max_chars]
        else:
            line = f"{line} {w}" if line else w
        if len(lines) == count:
            break
    return lines


def render(lines):
    """[n, 3, 48, 320] as PP-OCR's recognizer takes it: black text on white, height 48, the
    width scaled to match and padded, (x / 255 - 0.5) / 0.5."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 40)
    batch = np.zeros((len(lines), 3, HEIGHT, WIDTH), np.float32)
    for i, line in enumerate(lines):
        left, top, right, bottom = font.getbbox(line)
        img = Image.new("L", (right - left + 16, bottom - top + 16), 255)
        ImageDraw.Draw(img).text((8 - left, 8 - top), line, font=font, fill=0)
        w = min(WIDTH, max(1, round(img.width * HEIGHT / img.height)))
        img = img.resize((w, HEIGHT), Image.BILINEAR)
        canvas = np.full((HEIGHT, WIDTH), 255.0, np.float32)
        canvas[:, :w] = np.asarray(img, np.float32)
        batch[i] = (canvas / 255.0 - 0.5) / 0.5
    return batch


def characters(model_path):
    import onnx

    m = onnx.load(model_path, load_external_data=False)
    chars = next(p.value for p in m.metadata_props if p.key == "character").split("\n")
    # PaddleOCR's CTC labels: blank first, then the dictionary, then the space.
    return ["<blank>"] + [c for c in chars if c != ""] + [" "]


def decode(ids, chars):
    out, last = [], 0
    for i in ids:
        if i != last and i != 0:
            out.append(chars[i] if i < len(chars) else "?")
        last = i
    return "".join(out)


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def run_ort(path, batch):
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: batch})[0]


def latency(compactor, path, one, runs):
    out = subprocess.run([compactor, "bench", "runtime", path, "--input", f"x={one}", "--threads", "2", "--runs", str(runs), "--json"], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    return r["compactor_median_ms"], r["onnxruntime_median_ms"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compactor", default=os.path.join(HERE, "..", "target", "release", "compactor"))
    ap.add_argument("--cache", default=os.path.join(HERE, "..", ".cache"))
    ap.add_argument("--out", default=os.path.join(HERE, "..", "target", "channels-bench"))
    ap.add_argument("--lines", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per runtime (0: no latency)")
    ap.add_argument("--keeps", default="0.9,0.75,0.5")
    ap.add_argument("--scores", default="magnitude,l1,iscs,random,activation")
    a = ap.parse_args()
    pillow()
    os.makedirs(a.out, exist_ok=True)
    src = os.path.join(a.cache, "corpus", "rapidocr-rec.onnx")
    lines = text_lines(a.cache, a.lines, "second")
    batch = render(lines)
    # Calibration (score=activation, compensation): other lines, from the first half, in batches of 16.
    calibration = os.path.join(a.out, "calibration")
    calib_batch = render(text_lines(a.cache, 64, "first"))
    for i in range(0, len(calib_batch), 16):
        os.makedirs(os.path.join(calibration, f"{i // 16}"), exist_ok=True)
        np.save(os.path.join(calibration, f"{i // 16}", "x.npy"), calib_batch[i:i + 16])
    one = os.path.join(a.out, "one_line.npy")
    np.save(one, batch[:1])
    chars = characters(src)

    def measure(path):
        probs = run_ort(path, batch)
        ids = probs.argmax(-1)
        texts = [decode(r, chars) for r in ids]
        errors = sum(edit_distance(t, l) for t, l in zip(texts, lines))
        return ids, 1 - errors / sum(len(l) for l in lines), texts

    ref_ids, ref_acc, ref_texts = measure(src)
    print(f"unpruned: character accuracy {ref_acc:.4f}; e.g. {lines[0]!r} -> {ref_texts[0]!r}", flush=True)
    rows = [("unpruned", "", os.path.getsize(src), 1.0, ref_acc, latency(a.compactor, src, one, a.runs) if a.runs else None)]
    for keep in a.keeps.split(","):
        for score in a.scores.split(","):
            out = os.path.join(a.out, f"rec_{score}_{keep}.onnx")
            # The activation score reads the calibration lines, and with them the cut channels'
            # mean contribution goes into the next layer's bias (compensation).
            calib = ["--calibration", calibration] if score == "activation" else []
            subprocess.run([a.compactor, "optimize", src, "-o", out, "--passes", f"lift-constants,infer-shapes,prune-channels(keep={keep},score={score})", *calib], check=True, capture_output=True)
            ids, acc, _ = measure(out)
            agree = float((ids == ref_ids).mean())
            lat = latency(a.compactor, out, one, a.runs) if a.runs else None
            rows.append((f"keep {keep}", score, os.path.getsize(out), agree, acc, lat))
            print(f"keep {keep} {score}: top-1 agreement {agree:.4f}, character accuracy {acc:.4f}, {os.path.getsize(out) / 2**20:.2f} MiB, latency {lat}", flush=True)
    print(f"\n{len(lines)} lines, e.g. {lines[0]!r}\n")
    print("| model | score | MiB | top-1 agreement | character accuracy | Compactor runtime | onnxruntime |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, score, size, agree, acc, lat in rows:
        l = f"{lat[0]:.2f} ms | {lat[1]:.2f} ms" if lat else " | "
        print(f"| {name} | {score} | {size / 2**20:.2f} | {agree:.4f} | {acc:.4f} | {l} |")


if __name__ == "__main__":
    main()
