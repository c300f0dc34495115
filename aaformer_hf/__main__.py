"""``python -m aaformer_hf``: the ``aaformer-hf`` command (aaformer_hf.apps.cli)."""
from .apps.cli import main

raise SystemExit(main())
