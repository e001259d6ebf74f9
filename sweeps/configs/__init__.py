"""Experiment configs, loaded by path: sweeps/configs/<name>.py[:variant]."""
