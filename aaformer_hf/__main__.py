"""``python -m aaformer_hf``: the ``aaformer-hf`` command (aaformer_hf.cli)."""
from .cli import main

raise SystemExit(main())
