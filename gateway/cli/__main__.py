"""``python -m gateway.cli``: the ``wattfare`` command."""

from gateway.cli import main

raise SystemExit(main())
