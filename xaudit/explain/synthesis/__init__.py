"""Feature synthesis: images made from a model alone (activation maximization and friends), as
explanation methods of kind ``synthesis`` (docs/architecture.md#the-check-contract).

Parts, each in its own small file: parameterizations of an image batch (``param.py``), robustness
transforms applied at every step (``transforms.py``), objectives that compose (``objectives.py``), the
batched optimization loop (``optimize.py``) and the registered methods (``methods.py``).
"""
