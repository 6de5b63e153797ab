"""What comes in: an API key to its tenant (``auth``), an HTTP request to a validated queued
request (``admission``: body bounds, schema, model, lane, deadline), a multipart upload
parsed as it streams (``uploads``), and the validated request put on its model's queue
under its tenant's limits (``ingress``). What goes out is ``berth.api.delivery``'s."""
