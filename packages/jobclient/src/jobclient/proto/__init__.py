"""The Remote Job Worker's API contract as Python code (public; generated, never edited).

`jobclient.proto.jobworker.v1.jobworker_pb2` holds the protobuf messages and enums of
`jobworker/v1/jobworker.proto` (beside it in this package), `jobworker_pb2_grpc` the gRPC stub
(`JobWorkerStub`) and servicer (`JobWorkerServicer`, `add_JobWorkerServicer_to_server`). The jobclient
SDK (`jobclient.Client`) is built on them; servers (jobserver) and other clients import them from here.
Regenerate with `make proto` (tools/gen_proto.py).
"""
