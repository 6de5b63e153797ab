"""Durable records in Redis shared by every role: the ingress queue (``queue.py``), jobs,
files and batches, one module per record.

State changes that must not race (claiming a job, finishing it, requeueing it
after its worker died) are Lua scripts in ``lua/``, so two replicas can never
both win.
"""
