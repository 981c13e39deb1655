# One image for every orderpipe binary: api, relay, worker, paymentsim and orderctl, all
# static (CGO_ENABLED=0), in /usr/local/bin of a distroless image running as nonroot.
# compose.yml builds it once and picks the binary per service with `command:`.
#
#   docker build -t orderpipe .
#   docker run --rm orderpipe                                    # the api (default CMD)
#   docker run --rm orderpipe /usr/local/bin/orderctl migrate    # any other binary
#
# The builder's Go must be at least the `go` line of go.mod (go 1.26.8); the golang images
# set GOTOOLCHAIN=local, so an older 1.26.x image fails loudly instead of downloading one.
# Pin a patch release with --build-arg GO_VERSION=1.26.8 if needed.

ARG GO_VERSION=1.26

# ---------------------------------------------------------------- build
FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0

# Modules first, in their own layer: it is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
# -o DIR with several main packages writes one binary per package, named after its directory.
RUN go build -trimpath -ldflags="-s -w" -o /out/ \
	./cmd/api ./cmd/relay ./cmd/worker ./cmd/paymentsim ./cmd/orderctl

# ---------------------------------------------------------------- run
FROM gcr.io/distroless/static-debian12:nonroot AS app
COPY --from=build /out/ /usr/local/bin/
# nonroot of the distroless image, numeric so that runAsNonRoot-style checks can verify it.
USER 65532:65532
# api :8080, paymentsim :8081, relay admin :9102, worker admin :9103
EXPOSE 8080 8081 9102 9103
CMD ["/usr/local/bin/api"]
