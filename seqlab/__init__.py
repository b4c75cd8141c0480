"""A notebook-first interpretability lab for sequence models

```python
from seqlab.core import SeqlabError
from seqlab.zoo import LabModel, load
```"""

__version__ = "0.1.0"
__all__ = []

# %% ../nbs/index.ipynb #c005
from .core import SeqlabError
from .zoo import LabModel, load