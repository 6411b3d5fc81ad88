"""Shared Kafka plumbing: the bootstrap address rule, client options and topics, the CloudEvents codec,
the reachability probe, the embedded broker and `EventClient`."""
