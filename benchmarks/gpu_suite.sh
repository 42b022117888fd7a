#!/usr/bin/env bash
# The GPU suite: every backend, f + g with LFO, tiling and a training step, timed with random full-size
# weights on the GPU at hand, as one table (and JSON with --json FILE). About 7 minutes on an H100.
#
#   bash benchmarks/gpu_suite.sh --json gpu.json        # on a machine with a CUDA GPU
#   bash benchmarks/gpu_suite.sh --dry-run              # the suite's logic on the CPU, tiny models
#   bash benchmarks/gpu_suite.sh --help                 # every option (--budget, --only, --list)
#
# PYTHON picks the interpreter (default: python). The work is done by benchmarks/gpu_suite.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_suite.py" "$@"
