"""Slicer-side logic of WSICLSegment: MRML nodes to and from the ``wsicl`` engine.

Every function takes the MRML scene and the module logics it needs as arguments, so the
same code runs inside Slicer and on the ``slicer-core`` package in tests.
"""
