"""What runs fast on this machine, measured on the run's own backbone and cached.

`precision: auto` and `channels_last: auto` time the run's frozen backbone at the run's image size
in each candidate setting for a few seconds and decide from the measured ratios (measure, decide);
the result is cached in the user's cache folder, one entry per (device, torch version,
architecture, image size), so that every run on the machine decides the same (cache).
`compile: auto` is decided from what compiling cost and gained on the run's own batches, measured
the first time and cached the same way (compile). A run's decisions are one SpeedPlan (plan),
which FrozenBackbone (frozen) runs the backbone with.
"""
