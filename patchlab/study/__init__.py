"""The study the notebooks drive: parameters and profiles, the runs a profile compares, tables, figures,
the seam inspector, and the one-command reproduction.

The only place in patchlab that imports the optional extras (pandas, matplotlib, seaborn, papermill,
ipywidgets, IPython); the core, :mod:`patchlab.memory` and :mod:`patchlab.metrics` never do.

- :mod:`.params`: the notebooks' declared parameters, their check, profiles.
- :mod:`.variants`: the runs a profile compares (the variants, their configurations, their directories).
- :mod:`.orchestrate`: training them (in parallel processes, or data-parallel under torchrun).
- :mod:`.measure`: what the notebooks measure on them (samples, memory, quality, the hand-over sweep).
- :mod:`.reports`: tables (pandas -> CSV and Markdown) and the report README.
- :mod:`.plots`: figures (matplotlib, seaborn).
- :mod:`.inspector`: the ipywidgets seam inspector.
- :mod:`.reproduce`: ``python -m patchlab reproduce``: the notebooks in order with papermill.
"""
