#!/usr/bin/env bash
# Fetches everything the test suite needs into the cache directory, once:
#   - a Python venv with onnx and onnxruntime (the references),
#   - real models from PyPI wheels (silero-vad, magika, rapidocr-onnxruntime),
#   - the ONNX backend node tests shipped in the onnx wheel.
# Cache: $COMPACTOR_CACHE, default <repo>/.cache (git-ignored). Safe to run repeatedly.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${COMPACTOR_CACHE:-$repo/.cache}
stamp="$cache/test-data.v2.ok"
if [ -f "$stamp" ]; then exit 0; fi
mkdir -p "$cache"
python=${PYTHON:-python3}
echo "fetch-test-data: setting up $cache" >&2
if [ ! -x "$cache/venv/bin/python" ]; then
  "$python" -m venv "$cache/venv"
fi
"$cache/venv/bin/pip" install -q --disable-pip-version-check -r "$repo/scripts/requirements-test.txt"
mkdir -p "$cache/wheels" "$cache/models"
"$cache/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$cache/wheels" \
  silero-vad==6.2.3 magika==1.0.3 rapidocr-onnxruntime==1.4.4
"$cache/venv/bin/python" - "$cache/wheels" "$cache/models" <<'PY'
import pathlib, sys, zipfile
wheels, models = map(pathlib.Path, sys.argv[1:])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".onnx"):
                target = models / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
PY
node_tests=$("$cache/venv/bin/python" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node"))')
ln -sfn "$node_tests" "$cache/onnx-node-tests"
count=$(find -L "$cache/onnx-node-tests" -maxdepth 1 -mindepth 1 -type d | wc -l)
if [ "$count" -ne 1765 ]; then echo "fetch-test-data: expected 1765 node tests, found $count" >&2; exit 1; fi
touch "$stamp"
echo "fetch-test-data: ready ($count node tests, $(find "$cache/models" -name '*.onnx' | wc -l) PyPI models)" >&2
