#!/usr/bin/env bash
# The whole test suite: fetches (and caches) the test data, then runs every test.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/fetch-test-data.sh
cargo test --workspace --release --locked "$@"
