"""Rewrite the op table of docs/dcz-format.md from the runtime's op table (deepcomp.runtime.ops).

    PYTHONPATH=$PWD python scripts/update-op-docs.py
"""

import pathlib
import re

from deepcomp.runtime.ops import docs_table

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "dcz-format.md"
text = DOC.read_text()
table = re.compile(r"^\| op \| inputs \| attrs \|\n(?:^\|.*\n)+", re.M)
if not table.search(text):
    raise SystemExit("docs/dcz-format.md has no op table")
DOC.write_text(table.sub(lambda m: docs_table() + "\n", text, count=1))
