"""Skim stage: the worker server's last preload, which freezes what the preload imported.

`analysis.skim.pool.start_worker_server` lists this module after the libraries, so the server
imports it once they are in. ``gc.freeze()`` moves every object they made (2 million, with
coffea's vector, sympy and numba) out of the collector's sight, which the Python docs advise
before forking: the workers forked from the server then never walk them in their own full
collections (nor copy their pages by touching them), and the server's own exit, when the
skim ends, skips a collection over all of them (0.9 s, during which it still held the skim's
standard output and error open, so that a caller reading them waited that long).
"""

import gc

gc.freeze()
