"""Deprecated: the generated API code is the public module `jobclient.proto` now.

`jobclient._proto.jobworker.v1.jobworker_pb2` and `..._pb2_grpc` still import, as the very modules of
`jobclient.proto.jobworker.v1` (not copies: protobuf registers each .proto once per process), with a
DeprecationWarning. Import `jobclient.proto.jobworker.v1` instead; this alias will be removed.
"""

import warnings

warnings.warn(
    "jobclient._proto is deprecated: import jobclient.proto.jobworker.v1 instead",
    DeprecationWarning,
    stacklevel=2,
)
