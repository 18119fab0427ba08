"""``python -m kmq.cli``."""

from kmq.cli.main import main

raise SystemExit(main())
