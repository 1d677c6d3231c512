"""``python -m distributed_surface`` is the ``dsurf`` command."""

import sys

from .cli import main

sys.exit(main())
