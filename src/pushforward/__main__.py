"""``python -m pushforward ...`` runs the command line (also under ``torchrun -m pushforward``)."""

from pushforward.cli import main

raise SystemExit(main())
