"""``python -m segml``: the command line.

``python -m`` puts the working directory first on the import path; it is taken
off before anything else is imported, so a stray ``concurrent.py`` or
``pandas.py`` there never runs in segml.
"""

import os
import sys

sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]

from segml.cli import main  # noqa: E402 - after the import path is made safe

main()
