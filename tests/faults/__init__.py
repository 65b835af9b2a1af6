"""Fault injection: the agent under kill -9, broker outages, full disks, corrupt buffers."""
