"""Importers: turn a source dataset into ``writer.VideoSpec`` lists and write them.

- ``ucsd``: UCSD Ped1 / Ped2 in the "frames" or the original UCSD layout.
- ``synthetic``: generated road videos for demos and tests.
"""
