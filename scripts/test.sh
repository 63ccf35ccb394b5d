#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (cached outside the clone), checks
# formatting and lints, then runs every test, including the real VS Code + Chromium one.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-test-deps.sh)"
cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings
cargo test --all-features
