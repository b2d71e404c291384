"""The model stage: heads (``heads``: learned, frozen dense, Hadamard), bodies (``body``: the interface;
``lstm``, ``gru``, ``transformer``), the architecture (``config``), the model joining a head and a body
(``language_model``) and the registry (``registry``: each ``--embed`` name and its head, each ``--model`` name).
A new body is one module here plus its name in the registry.

Import the modules directly (``from lmfix.model.language_model import LanguageModel``); the registry's
names and ``config`` load without torch, so the command line starts fast.
"""
