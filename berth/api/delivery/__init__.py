"""What goes out to the client: a request's token events relayed from Redis pub/sub
(``relay``), the wait that always ends with one terminal event (``events``), shared stream
followers (``followers``), SSE keepalives (``keepalive``), and a chat completion's life once
its route has read it: queued, followed and ended (``chat_run``), streamed and resumed
(``chat_stream``) or assembled (``chat_answer``), given up when its client leaves
(``disconnect``)."""
