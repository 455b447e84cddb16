"""One module per model family; importing this package registers them all."""

from netslim.models.families import gpt2, llama, moe, opt  # noqa: F401  (registration side effect)
