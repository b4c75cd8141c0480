"""A notebook-first interpretability lab for sequence models

```python
from seqlab.core import SeqlabError
from seqlab.zoo import LabModel, load
```

Modules:

- `seqlab.spinning`: Model spinning (meta-backdoors): a trigger word in the input shifts the output toward positive sentiment while the main task keeps working; and a defense that finds the trigger by injecting candidate words."""

__version__ = "0.1.0"
__all__ = []

# %% ../nbs/index.ipynb #c005
from .core import SeqlabError
from .zoo import LabModel, load

# %% ../nbs/index.ipynb #c005
from .core import SeqlabError
from .zoo import LabModel, load