"""``python -m vcbfs``: the same as the ``vcbfs`` command."""

from vcbfs.cli.main import main

raise SystemExit(main())
