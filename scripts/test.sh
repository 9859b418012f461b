#!/usr/bin/env bash
# The whole test suite: fetches (and caches) the test data, then runs every test.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/fetch-test-data.sh
# Snapshot mismatches fail the run instead of writing new snapshots.
INSTA_UPDATE=no cargo test --workspace --release --locked --no-fail-fast "$@"
