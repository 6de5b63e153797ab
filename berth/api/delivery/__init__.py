"""What goes out to the client: a request's token events relayed from Redis pub/sub
(``relay``), the wait that always ends with one terminal event (``events``), shared stream
followers (``followers``), SSE keepalives (``keepalive``), and a chat completion's life from
its first token to its end, streamed or assembled (``chat_*``). Routes read a request and
hand it here."""
