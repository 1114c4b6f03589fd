"""What every stage shares: the error hierarchy, config checks, provenance, statistics and the
CLI wrapper.

Nothing here imports torch, Lightning or tritonclient, so any stage (and the report) can use it
cheaply.
"""
