"""Trident on Ray: sharded index builds and scatter-gather serving.

Optional: needs the ``ray`` extra (``pip install 'trident-search[ray]'``). Nothing in encoders,
indexers or service imports this package; the CLI reaches it through the ``trident.commands``
entry-point group or a lazy import when ``--ray-address`` is given, and Ray itself is imported
only inside the functions that use it.
"""
