"""Hub distribution (pushing trained model folders with model cards). Arrives with the Hub issue; until then a clear
error, raised before any training starts."""
from pathlib import Path
from typing import Optional

__all__ = ['check_push_supported', 'push_model_folder']

_NOT_YET = ('pushing to the Hub is not implemented yet in aaformer_hf (it comes with the Hub-distribution work); '
            'train without --push_to_hub and upload {what} with `huggingface-cli upload` meanwhile')


def check_push_supported(repo_id: Optional[str]) -> None:
    raise NotImplementedError(_NOT_YET.format(what='OUTPUT_DIR/model'))


def push_model_folder(folder: Path, repo_id: Optional[str]) -> None:
    raise NotImplementedError(_NOT_YET.format(what=folder))
