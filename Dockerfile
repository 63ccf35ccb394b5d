# Multi-stage build: compile in the Rust image, ship only the binary on a minimal non-root
# base (glibc, CA certificates, nothing else). The binary is both the proxy and the instance
# pods' init container that installs the VS Code CLI.
#
# Plain `podman build .` / `docker build .` fetches the crates from crates.io. For a build
# without network (scripts/image-testenv.sh), mount a filled cargo registry at
# /usr/local/cargo/registry and pass --build-arg CARGO_NET_OFFLINE=true; a target directory
# mounted from outside and named with --build-arg CARGO_TARGET_DIR keeps the compiled
# dependencies between builds.
FROM rust:1-bookworm AS build
ARG CARGO_NET_OFFLINE=false
ARG CARGO_TARGET_DIR=/src/target
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The test kit is a member of the workspace: Cargo reads its manifest to resolve the lock file,
# but builds nothing of it for the product.
COPY testkit ./testkit
RUN cargo build --release --locked -p vscode-on-demand --bin vscode-on-demand \
    && install -D -m 0755 "$CARGO_TARGET_DIR/release/vscode-on-demand" /out/vscode-on-demand \
    && strip /out/vscode-on-demand

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vscode-on-demand /vscode-on-demand
USER 65532:65532
ENTRYPOINT ["/vscode-on-demand"]
CMD ["serve", "--backend=kube", "--listen=0.0.0.0:8443"]
