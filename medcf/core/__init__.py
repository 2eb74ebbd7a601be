"""The method, in memory: attributes and the ``do()`` parser, the causal graph, the attribute-split condition, the
network, DDIM sampling, the guidance rules and plans, and the counterfactual engine. The core reads and writes no
folder and opens no MLflow run; it imports only :mod:`medcf.runtime`."""
