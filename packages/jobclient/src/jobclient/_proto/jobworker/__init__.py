"""Deprecated alias of `jobclient.proto.jobworker` (see `jobclient._proto`)."""
