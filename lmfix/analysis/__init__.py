"""Using finished runs: ``evaluate`` (test perplexity into eval.json), ``compare`` (tables and plots
against the learned baseline) and ``generate`` (sampling).
"""
