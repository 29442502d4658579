"""What the run forkserver prepares beyond imports (dagster.yaml's `preload_modules`), so every
forked run shares it instead of building its own.

- LanceDB, imported: its ~45 MB of code and data. Safe because the forkserver never uses it:
  LanceDB restarts its event loop and its Rust runtime in each forked child (its own at-fork
  hooks), and nothing can be mid-operation at fork time. Its warning on every fork is about
  exactly that case, so it is silenced here.
- The served model's token counter (~9 MB of tokenizer), which chunking uses in every run; its
  tables are only read, so the pages stay shared.
"""

import warnings

warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)

import lancedb  # noqa: F401 - imported for its side effect: loaded before the fork

from expert_pipeline.adapters.local_model_files import model_files
from expert_pipeline.adapters.openai.embedder import tokenizer_file_counter

tokenizer_file_counter(str(model_files().tokenizer_file))
