# sbserve image: a build stage with the toolchain and -dev packages, a runtime stage with only the
# shared libraries the binaries load.
#
#   CPU:   docker build -t sbserve:cpu .
#   CUDA:  docker build --build-arg SBSERVE_CUDA=ON -t sbserve:cuda .
#          (adds NVIDIA's Debian 12 CUDA repository, builds the kernels for CUDA_ARCHITECTURES,
#          and ships the CUDA runtime and cuBLAS; run with the NVIDIA container toolkit,
#          e.g. `docker run --gpus all ...`). The base stays debian:12 in both variants so the
#          -dev package list is the one deploy/setup.sh installs; an nvidia/cuda:*-devel-ubuntu*
#          base also works with BASE_IMAGE/RUNTIME_IMAGE but needs Ubuntu's package names.
#
#   docker run -p 50051:50051 -p 8080:8080 -v /models:/models:ro sbserve:cpu --model /models/sb-3b
#   Without --model the server starts the embedded demo model.
ARG BASE_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim

FROM ${BASE_IMAGE} AS build
ARG SBSERVE_CUDA=OFF
ARG CUDA_PACKAGE_VERSION=12-6
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
      && apt-get install -y --no-install-recommends \
           cuda-nvcc-${CUDA_PACKAGE_VERSION} cuda-cudart-dev-${CUDA_PACKAGE_VERSION} \
           libcublas-dev-${CUDA_PACKAGE_VERSION} ; \
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
ARG CUDA_PACKAGE_VERSION=12-6
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
      && apt-get install -y --no-install-recommends \
           cuda-cudart-${CUDA_PACKAGE_VERSION} libcublas-${CUDA_PACKAGE_VERSION} \
      && apt-get purge -y wget && apt-get autoremove -y ; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sbserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sbserve
COPY --from=build /out/sbserve /out/sbctl /usr/local/bin/
# Read by the NVIDIA container toolkit; harmless on CPU hosts.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
# 50051: gRPC API (--port); 8080: /metrics, /health, /ready (--metrics-port).
EXPOSE 50051 8080
# Exec form: sbserve is PID 1 and receives SIGTERM directly, so `docker stop` and Kubernetes
# trigger the drain (readiness NOT_SERVING, in-flight requests finish up to --drain-timeout).
ENTRYPOINT ["/usr/local/bin/sbserve"]
CMD ["--host=0.0.0.0", "--port=50051", "--metrics-host=0.0.0.0", "--metrics-port=8080"]
