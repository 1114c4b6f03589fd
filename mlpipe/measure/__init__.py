"""Measurement, the only place that times the runtime: `loadgen` (the one load generator),
`targets` (`mlpipe-serve-targets`), `soak` (`mlpipe-serve-soak`), `tune` (`mlpipe-tune`),
`backends` + `cost` + `bench` (`mlpipe-bench`), `roofline` + `profile` (`mlpipe-profile`), `knee`
(`mlpipe-knee`), `relu_bench` (`mlpipe-relu-bench`) and `tables` (tables, plots)."""
