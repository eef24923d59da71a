"""Experiments: sweeps over configs, their results table, trade-off curves and figures.

The driver side (spec, jobs, results, tradeoff, plot, cli) never imports torch: it only starts
torchrun jobs and reads their run directories. `worker` is the exception: it runs inside torchrun
and trains many points in one job.
"""
