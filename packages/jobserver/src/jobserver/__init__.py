"""Remote Job Worker gRPC server: mutual TLS 1.3, authorization, durable job state.

Importing this package pins gRPC's TLS 1.2 cipher list (see `jobserver.tls`). gRPC reads it once, when
`grpc` is first imported, so it must happen before that: importing `jobserver` first is enough.
"""

import os
import sys

#: TLS 1.2 suites that need an RSA certificate. With the server's ECDSA certificate no TLS 1.2
#: handshake can agree on any of them, so only TLS 1.3 (whose suites this list does not touch) remains.
TLS12_CIPHER_SUITES = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"

os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_CIPHER_SUITES
#: True when grpc was imported before this package: the cipher list may then not have taken effect
#: (the server still refuses TLS 1.2 per call, see `jobserver.identity`).
GRPC_IMPORTED_FIRST = "grpc" in sys.modules

#: The version of this distribution (kept equal to pyproject.toml's by tests/test_workspace.py).
__version__ = "0.1.0"
#: The name this package is distributed under (`pip install remote-job-worker-server`).
DISTRIBUTION = "remote-job-worker-server"
