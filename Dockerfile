# sbserve image: a build stage with the toolchain and -dev packages, a runtime stage with only the
# shared libraries the binaries load.
#
#   CPU:   docker build -t sbserve:cpu .
#   CUDA:  docker build --build-arg SBSERVE_CUDA=ON -t sbserve:cuda .
#          Base: debian:12 plus NVIDIA's Debian 12 CUDA repository (not an nvidia/cuda image), so
#          both variants share the Debian package names of deploy/setup.sh. CUDA_VERSION (default
#          13.0, the toolkit the project is built and tested with) picks the cuda-*-13-0 packages;
#          kernels are built for CUDA_ARCHITECTURES (default 90a: H100/H200 only; e.g. "90a;100a"
#          for Blackwell as well). The host needs an NVIDIA driver that supports CUDA 13.0
#          (r580 or newer) and the NVIDIA container toolkit (`docker run --gpus all ...`).
#          deploy/README.md says what of this was verified.
#
#   docker run -p 50051:50051 -p 8080:8080 -v /models:/models:ro sbserve:cpu --model /models/sb-3b
#   Without --model the server generates and serves the embedded demo model in SBSERVE_CACHE_DIR
#   (/var/cache/sbserve, owned by uid 10001, a volume: an emptyDir under readOnlyRootFilesystem).
ARG BASE_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim

FROM ${BASE_IMAGE} AS build
ARG SBSERVE_CUDA=OFF
ARG CUDA_VERSION=13.0
ARG CUDA_ARCHITECTURES=90a
ARG BUILD_JOBS=
ENV DEBIAN_FRONTEND=noninteractive
# The -dev list of deploy/setup.sh, without the test-only tools (prometheus, yamllint, node).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config ca-certificates \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libabsl-dev libspdlog-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev \
      libpcre2-dev libicu-dev libcpp-httplib-dev \
 && if [ "$SBSERVE_CUDA" = "ON" ]; then \
      apt-get install -y --no-install-recommends wget \
      && wget -q https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
      && dpkg -i cuda-keyring_1.1-1_all.deb && rm cuda-keyring_1.1-1_all.deb \
      && apt-get update \
      && cuda_pkg=$(echo "$CUDA_VERSION" | tr . -) \
      && apt-get install -y --no-install-recommends \
           cuda-nvcc-${cuda_pkg} cuda-cudart-dev-${cuda_pkg} \
           libcublas-dev-${cuda_pkg} \
      && test -x /usr/local/cuda/bin/nvcc \
      && /usr/local/cuda/bin/nvcc --version | grep -q "release ${CUDA_VERSION}," ; \
    fi \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only the sources: build folders and local state in the checkout stay out of the image.
COPY CMakeLists.txt ./
COPY proto proto
COPY kernels kernels
COPY engine engine
COPY server server
COPY client client
COPY tests tests
RUN cuda_args="-DSBSERVE_CUDA=OFF"; \
    if [ "$SBSERVE_CUDA" = "ON" ]; then \
      cuda_args="-DSBSERVE_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}"; \
    fi \
 && cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release $cuda_args \
 && cmake --build /build --target sbserve sbctl -j ${BUILD_JOBS:-$(nproc)} \
 && mkdir -p /out \
 && cp "$(find /build -type f -name sbserve -perm -u+x | head -n1)" /out/sbserve \
 && cp "$(find /build -type f -name sbctl -perm -u+x | head -n1)" /out/sbctl \
 && strip /out/sbserve /out/sbctl

FROM ${RUNTIME_IMAGE} AS runtime
ARG SBSERVE_CUDA=OFF
ARG CUDA_VERSION=13.0
ENV DEBIAN_FRONTEND=noninteractive
# Runtime halves of the -dev packages above (Debian 12 names).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libgrpc++1.51 libprotobuf32 libabsl20220623 libspdlog1.10 libfmt9 \
      libcpp-httplib0.11 libpcre2-8-0 libicu72 libssl3 zlib1g libbrotli1 libgomp1 \
 && if [ "$SBSERVE_CUDA" = "ON" ]; then \
      apt-get install -y --no-install-recommends wget \
      && wget -q https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb \
      && dpkg -i cuda-keyring_1.1-1_all.deb && rm cuda-keyring_1.1-1_all.deb \
      && apt-get update \
      && cuda_pkg=$(echo "$CUDA_VERSION" | tr . -) \
      && apt-get install -y --no-install-recommends \
           cuda-cudart-${cuda_pkg} libcublas-${cuda_pkg} \
      && apt-get purge -y wget && apt-get autoremove -y ; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sbserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/cache/sbserve --no-create-home \
      --shell /usr/sbin/nologin sbserve \
 && install -d -m 0750 -o 10001 -g 10001 /var/cache/sbserve
COPY --from=build /out/sbserve /out/sbctl /usr/local/bin/
# The demo model (no --model) is generated here on first start; with --model nothing is written.
# HOME points here too, so nothing else tries the read-only root filesystem.
ENV SBSERVE_CACHE_DIR=/var/cache/sbserve \
    HOME=/var/cache/sbserve
VOLUME ["/var/cache/sbserve"]
# Read by the NVIDIA container toolkit; harmless on CPU hosts.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
# 50051: gRPC API (--port); 8080: /metrics, /health, /ready (--metrics-port); 8000: the OpenAI
# HTTP API (--http-port, off unless given).
EXPOSE 50051 8080 8000
# Exec form: sbserve is PID 1 and receives SIGTERM directly, so `docker stop` and Kubernetes
# trigger the drain (readiness NOT_SERVING, in-flight requests finish up to --drain-timeout).
ENTRYPOINT ["/usr/local/bin/sbserve"]
CMD ["--host=0.0.0.0", "--port=50051", "--metrics-host=0.0.0.0", "--metrics-port=8080"]
