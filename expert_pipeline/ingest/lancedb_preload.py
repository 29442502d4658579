"""LanceDB imported once by the run forkserver (dagster.yaml's `preload_modules`), so its ~45 MB
of code and data are shared by every forked run instead of loaded by each.

Safe because the forkserver never uses it: LanceDB restarts its event loop and its Rust runtime
in each forked child (its own at-fork hooks), and nothing can be mid-operation at fork time.
Its warning on every fork is about exactly that case, so it is silenced here.
"""

import warnings

warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)

import lancedb  # noqa: F401 - imported for its side effect: loaded before the fork
