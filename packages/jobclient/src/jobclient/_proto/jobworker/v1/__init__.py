"""Deprecated alias of `jobclient.proto.jobworker.v1` (see `jobclient._proto`)."""
