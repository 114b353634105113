"""The panel's sections: Qt wiring between the ``.ui``'s widgets and the logic, one class
per section (model and run settings; context sets and prompts; run, progress, results and
interactive mode). Slicer-only (``qt``, ``slicer``); the work lives in ``WSICLSegmentLib``.
"""
