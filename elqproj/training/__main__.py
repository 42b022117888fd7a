"""``python -m elqproj.training`` / ``accelerate launch -m elqproj.training --config X.yaml``."""

import sys

from .command import main

sys.exit(main())
