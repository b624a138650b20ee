"""Deprecated alias: this name is the module `jobclient.proto.jobworker.v1.jobworker_pb2_grpc` itself."""

import sys

from jobclient.proto.jobworker.v1 import jobworker_pb2_grpc

sys.modules[__name__] = jobworker_pb2_grpc
