"""The model stage: heads (``heads``: learned, frozen dense, Hadamard), the LSTM body (``lstm``) and the
variant registry (``registry``: each ``--embed`` name and the head it gives). A new body is one module here.

Import the modules directly (``from lmfix.model.lstm import LanguageModel``); the registry's names load
without torch, so the command line starts fast.
"""
