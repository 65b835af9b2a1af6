"""The Sparkplug B 3.0 edge node dialect (`uplink.mqtt.dialect: sparkplug`).

`dialect` (the dialect and its DCMD mapping), `session` (one MQTT session: bdSeq, seq,
births, primary host), `registry` (metrics, aliases, birth payloads), `codec` (payload
functions), `topics`, `bdseq` (the persisted bdSeq) and the generated `sparkplug_b_pb2`
(from `sparkplug_b.proto`, scripts/gen_sparkplug.sh). Only `dialect` and what it imports
pull in protobuf, and only when the dialect is chosen.
"""
