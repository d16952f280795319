"""The review domain: the relabel queue, decisions, annotators, progress, corrected dataset
versions and the Label Studio round trip (on top of :mod:`infgate.store`)."""
