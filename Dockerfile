# The Tether image: tether-ca, tether-proxy and the demo app service-b (the example app of
# deploy/kubernetes), on Debian bookworm, running as the unprivileged 65532.
#
#   docker build -t registry.example.com/tether:0.1.0 .
#   docker push registry.example.com/tether:0.1.0
#
# Not built by `make test` or CI (they have no Docker engine or base images); what the image
# must provide is what deploy/kubernetes uses: the three binaries on PATH, /bin/sh and tar for
# the CA's init container, bash for the example app's probe, and CA roots for https.

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
# The three binaries the image ships, in one build; --locked: exactly the dependency versions
# the tests ran with. The release profile has debuginfo (debug = 1); the image's copies drop
# it with strip --strip-debug (binutils, in the rust image), keeping the symbol table.
RUN cargo build --release --locked --bin tether-ca --bin tether-proxy --bin service-b \
 && strip --strip-debug target/release/tether-ca target/release/tether-proxy \
      target/release/service-b

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tether-ca /src/target/release/tether-proxy \
     /src/target/release/service-b /usr/local/bin/
# The uid and gid the manifests run as (runAsUser/fsGroup 65532); no shell login, no home.
USER 65532:65532
