"""Measurement, the only place that times the runtime: `loadgen` (the one load generator),
`rounds` (stability, the convergence loop, interleaving), `served` (one served point), `pareto`,
`tune` + `decision` (`mlpipe-tune`), `targets` (`mlpipe-serve-targets`), `soak`
(`mlpipe-serve-soak`), `backends` + `cost` + `bench` (`mlpipe-bench`), `roofline` + `profile`
(`mlpipe-profile`), `knee` (`mlpipe-knee`), `relu_bench` + `relu_targets` + `relu_tables` +
`relu_idle` (`mlpipe-relu-bench`), `tables` (tables, plots) and `sections` + `profile_section`
(the report's sections on measurements)."""
