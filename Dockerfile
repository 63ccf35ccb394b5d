# Multi-stage build: compile in the Rust image, ship only the binary on a minimal non-root
# base (glibc, CA certificates, nothing else). The binary is both the proxy and the instance
# pods' init container that installs the VS Code CLI.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The test kit is a member of the workspace: Cargo reads its manifest to resolve the lock file,
# but builds nothing of it for the product.
COPY testkit ./testkit
RUN cargo build --release --locked -p vscode-on-demand --bin vscode-on-demand \
    && strip target/release/vscode-on-demand

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/vscode-on-demand /vscode-on-demand
USER 65532:65532
ENTRYPOINT ["/vscode-on-demand"]
CMD ["serve", "--backend=kube", "--listen=0.0.0.0:8443"]
