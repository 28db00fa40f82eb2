"""The command line (``retriever index | search | serve | bench | ...``): argument parsing (``args``),
the commands (``main``; ``python -m retriever`` and the ``retriever`` script call ``retriever.cli.main.main``) and
``retriever bench`` (``bench``). The top layer: nothing imports it.
"""
