"""The flow of a message through the engine, one module per stage, in the order data moves:

    receive → parse MSH → gate → store → acknowledge  |  route → map → deliver

    ingest.py    receive, store, acknowledge (Ingest): on the listener's time, before the ACK
    gate.py      what the receiver decides before the ACK (RouteGate, the MSH header checks)
    ── the database-backed queue ──
    process.py   parse, route, map (Processor): one outcome per message, ``Processed``
    deliver.py   deliver, retry, dead-letter (Dispatcher): one RetryPolicy, one CircuitBreaker
    worker.py    the process that runs process and deliver, apart from the receiver

The receiver parses the message, asks the gate, stores the raw bytes with the metadata and the
gate's verdict in one commit (a refused message is kept too, with its reason), and only then
answers; routing, mapping and delivery follow in the worker process. Names are those of
Enterprise Integration Patterns: Idempotent Receiver (ingest), Content-Based Router and Message
Translator (process), Guaranteed Delivery and Dead Letter Channel (deliver).
"""
