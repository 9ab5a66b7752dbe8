"""The work: the tutorial's eight training programs, the problem they share, and what drives them.

Nothing in this package knows about HTTP or SQL: a run takes a spec and a sink.
"""
