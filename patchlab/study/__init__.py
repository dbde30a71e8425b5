"""The study the notebooks drive: parameters and profiles, the runs a profile compares, tables, figures,
the seam inspector, and the one-command reproduction.

The only place in patchlab that imports the optional extras (pandas, matplotlib, seaborn, papermill,
ipywidgets, IPython); the core, :mod:`patchlab.memory` and :mod:`patchlab.metrics` never do.

- :mod:`.params`: the notebooks' declared parameters, their check, profiles.
- :mod:`.experiments`: the runs a profile compares, training them, sampling and measuring them.
- :mod:`.reports`: tables (pandas -> CSV and Markdown) and the report README.
- :mod:`.plots`: figures (matplotlib, seaborn).
- :mod:`.inspector`: the ipywidgets seam inspector.
- :mod:`.reproduce`: ``python -m patchlab reproduce``: the notebooks in order with papermill.
"""
