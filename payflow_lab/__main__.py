"""``python -m payflow_lab`` is the ``payflow-lab`` command."""

from .cli import main

raise SystemExit(main())
