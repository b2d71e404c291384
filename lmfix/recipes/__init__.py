"""Experiments as configuration: ``runner`` loads a recipe directory (``recipes/NAME/*.toml``), trains and
evaluates every variant it names (adopting finished runs), and writes the report; ``lmfix demo`` too.
"""
