"""``python -m elqproj`` (the ``elqproj`` command), e.g. ``accelerate launch --multi_gpu --num_processes 8 -m elqproj
restore archive/ -o restored/ ...`` to restore an archive with one process per GPU."""

import sys

from .cli import main

sys.exit(main())
