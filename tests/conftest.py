import os

# tests never touch the network: the Hub client reads these at import time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # the web app's tests: no usage pings

# the training example's modules (examples/train.py and the train_*.py beside it) import as transformers' example
# tests import theirs: with the examples folder on the path
import sys
from pathlib import Path

EXAMPLES = str(Path(__file__).resolve().parents[1] / 'examples')
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
