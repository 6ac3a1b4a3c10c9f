#!/usr/bin/env bash
# The mutation campaign (see README.md here). Not part of CTest or CI: run it on demand.
exec python3 "$(dirname "$0")/run.py" "$@"
