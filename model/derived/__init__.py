"""Forms derived from iced-x86's instruction tables (see docs/derived.md).

``footprints.json.gz`` is written by tools/footprints.py; this package reads it (z3 and the
standard library only), lazily: nothing is loaded or built at import.
"""
