#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (cached outside the clone), checks
# formatting and lints, then runs every test, including the real VS Code + Chromium one and
# the Kubernetes backend against a real API server.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/install-test-deps.sh)"
# The Kubernetes tests run against a real API server built from source: ~10 minutes the first
# time, a no-op once it is in the cache.
bash scripts/kube-testenv.sh build
# The project's image from the Dockerfile, with podman and base images made from Debian (no
# container registry is reachable): ~3 min of installs and base images the first time, then a
# cached release build; tests/image.rs runs it.
eval "$(bash scripts/image-testenv.sh build)"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# `cargo test` builds a package's own binaries for its integration tests, but not those of the
# test kit (testkit/: vod-upstream, vod-kubelet) that the tests run beside the product: build
# every target of the workspace first. bench/run.sh --smoke reuses this same build.
cargo build --workspace --all-targets
cargo test --workspace
# The benchmark's smoke mode (seconds, on the debug build above), so bench/ cannot rot.
bash bench/run.sh --smoke
