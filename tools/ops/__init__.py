"""What an operator sees of a fleet, read over MQTT from retained topics only.

Nothing here needs the aggregator's disk: the devices' retained statuses (and their
last wills), the aggregator's retained status and per-device ledgers, and the retained
model are all on the broker.
"""
