"""Commands (downlink): signed requests from upstream carried out on devices, safely.

The path of one request: the uplink's dialect decodes it (`request.parse_request`), the
signature is checked (`signing`), its age (`request.expiry`), its id against the ledger of
requests seen (`ledger`), then the executor runs it on the device within the point's
`write:` limits (`executor`); the outcome is recorded, audited (`audit`) and answered.
Nothing here is imported when `commands:` is off; `cryptography` only when a signature
is checked or made.
"""
