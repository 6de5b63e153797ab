"""Durable records in Redis shared by every role: jobs, files and batches.

State changes that must not race (claiming a job, finishing it, requeueing it
after its worker died) are Lua scripts in ``lua/``, so two replicas can never
both win.
"""
