# Meridian services image: router, api, rebalancer and gencompose (the compose `init` service:
# migrations, meridian_app password, shard-map bootstrap) in one image; the compose file picks
# the binary with `command:` (e.g. ["router"]). Built by docker-compose.multiregion.yml.
#
#   docker build -t meridian:dev .

# ---- build ----
FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first so that code changes reuse the module download layer.
COPY go.mod go.sum ./
# go.mod replaces gnet with the patched copy here (third_party/gnet/MERIDIAN.md).
COPY third_party/ third_party/
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# Static binaries: the runtime image has no libc.
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags="-s -w" -o /out/ ./cmd/router ./cmd/api ./cmd/rebalancer ./cmd/gencompose

# ---- runtime ----
# distroless/static: no shell, no package manager, runs as nonroot (uid 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/router /out/api /out/rebalancer /out/gencompose /usr/local/bin/
COPY deploy/multi-region/topology.yaml /etc/meridian/topology.yaml
WORKDIR /home/nonroot
USER nonroot:nonroot
# Default; the compose file sets the command per service.
CMD ["router"]
