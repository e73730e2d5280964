"""The trigger kinds of ``when:``, one module each (``registry`` names them).

A regular package, not a namespace one: import-linter (grimp) and
``pkgutil.walk_packages`` skip a directory without ``__init__.py``, so the
layer contracts did not see these modules at all.
"""
