"""Events in: ride-hailing events from NATS JetStream into the landing zone (``pulse intake``).

``schema`` is the message schema, ``source`` the small consumer interface and its JetStream implementation,
``consumer`` the loop that lands micro-batches durably before acknowledging them, ``publish`` the producer side
(the live simulator's ``--bus``).
"""
