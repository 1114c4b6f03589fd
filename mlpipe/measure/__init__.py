"""Measurement: `loadgen` (the one load generator), `backends`, `cost` (FLOPs/bytes vs peaks),
`bench` (`mlpipe-bench`), `roofline` and `profile` (`mlpipe-profile`), `tables` (tables, plots)."""
