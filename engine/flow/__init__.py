"""The flow of a message through the engine, one module per stage, in the order data moves:

    receive → store → gate → acknowledge    ingest.py (Ingest), gate.py (RouteGate): the
                                            listener's time, before the ACK
    route → map                             process.py (Processor): from the queue
    deliver, retry, dead-letter             deliver.py (Dispatcher): from the queue
                                            worker.py: the process that runs process + deliver

The receiver parses only what the gate needs (MSH, and the route and mapping checks), stores the
raw bytes with that metadata and answers; routing, mapping and delivery follow in the worker
process, decoupled by the database-backed queue. Names are those of Enterprise Integration
Patterns: Idempotent Receiver, Content-Based Router, Message Translator, Guaranteed Delivery,
Dead Letter Channel.
"""
