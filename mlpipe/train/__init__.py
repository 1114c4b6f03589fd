"""Training stage: `nets` (plain nn.Modules), `module` (the LightningModule), `run` (`train(cfg)`
and the `mlpipe-train` entry point), `throughput` (loader vs training-step rate)."""
