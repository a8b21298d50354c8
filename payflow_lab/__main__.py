"""``python -m payflow_lab`` is the ``payflow-lab`` command."""

from payflow_lab.app.cli import main

raise SystemExit(main())
