"""A notebook-first interpretability lab for sequence models

Modules:

- `seqlab.spinning`: Model spinning (meta-backdoors): a trigger word in the input shifts the output toward positive sentiment while the main task keeps working; and a defense that finds the trigger by injecting candidate words."""

__version__ = "0.1.0"

from .core import SeqlabError
from .zoo import LabModel, load
from . import capture  # lends LabModel its run_with_cache / run_with_hooks / hooks methods
