"""`parkgate ingest`: the agents' at-least-once MQTT into exactly-once PostgreSQL rows.

Runs next to the database, never on a gateway: `parkgate run` imports nothing from here, and
psycopg comes with the optional extra `parkgate[ingest]`.
"""
